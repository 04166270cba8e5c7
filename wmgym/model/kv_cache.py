"""Rotary embeddings and the key/value cache of the dynamics transformer.

The cache is a ring of ``capacity`` positions per row (the longest a row's content gets:
context plus a full window of blocks). Tokens have *logical* positions ``0, 1, 2, ...`` that
only grow; logical position ``p`` lives at slot ``p % capacity`` and its key is stored rotated
at ``p``. All rows share the logical ``end`` where the next tokens go, so a pass writes every
row's new keys at the same slot (a plain slice) and one RoPE table serves the whole batch. Row
``b`` holds logical positions ``[start[b], end)``::

    logical:  ... dropped ... [context (Nc)] [slot + frame] ... [slot + frame] | end
    slot:     (p % capacity): the window wraps around the ring, nothing is ever moved

Attention only sees differences of positions and softmax does not care in which order the
keys come, so a pass attends to the *whole* ring (one contiguous read per layer, which is what
the CPU matmul kernels need to run at memory speed) and masks what is not the row's content:

* when a row's window of frames is full, its oldest frame is dropped by moving its *context*
  one frame forward (``start += frame``) and writing the context's keys there, rotated afresh
  from a copy kept unrotated (``ctx_k``): ``Nc`` positions per dropped frame;
* the next frame then goes into the slots the dropped frame freed: no compaction, no shift;
* a restarted row's context goes right before ``end``; rows that started at different times
  have different ``start`` and the mask hides what lies before each row's start.
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


def cached_attention(q: Tensor, k: Tensor, v: Tensor, bias: Tensor | None) -> Tensor:
    """Attention of ``q (B, H, t, hd)`` over the whole ring ``k, v (B, G, C, hd)``.

    ``G`` key/value heads each serve ``H / G`` consecutive query heads (grouped-query
    attention; ``G = H`` is plain multi-head): a group's queries are stacked into one matmul,
    so its keys and values are read once. ``bias`` (broadcastable to ``(B, 1, t, C)``, float32,
    ``0`` or ``-inf``) hides what a query may not see. Two batched matmuls over contiguous
    buffers in the cache's dtype; the scores are softmaxed in float32. (On CPUs without AMX,
    PyTorch's fused kernel is several times slower for bfloat16 single-token queries than
    these two matmuls; see the speed bench.)
    """
    b, h, t, hd = q.shape
    g = k.shape[1]
    q = q.reshape(b, g, (h // g) * t, hd)  # (B, G, H/G * t, hd): group-major, then token
    scores = torch.matmul(q.to(k.dtype) * hd**-0.5, k.transpose(-1, -2)).float()
    if bias is not None:
        if g != h:  # the same bias for every query head of a group
            bias = bias.unsqueeze(2).expand(*bias.shape[:2], h // g, *bias.shape[2:])
            bias = bias.reshape(*bias.shape[:2], (h // g) * t, bias.shape[-1])
        scores = scores + bias
    return torch.matmul(scores.softmax(-1).to(v.dtype), v).view(b, h, t, hd)


class KVCache:
    """Preallocated rotated keys and values of every layer for a batch of rollouts.

    ``k, v`` are ``(n_layer, B, n_kv_head, capacity, head_dim)`` in ``kv_dtype`` (default: the
    model's ``dtype``; bfloat16 halves what every pass reads), a ring per row (see the module
    docstring). ``k`` is a view of keys stored channel-major, each head's as a
    ``(head_dim, capacity)`` matrix, so the scores ``q @ k^T`` multiply by a contiguous
    matrix: on a CPU that matmul takes about half the time it takes on the transposed rows.
    Row ``b`` holds logical positions ``[start[b], end)``: its context, then ``n_frames[b]``
    (slot + frame) blocks. ``ctx_k`` and ``ctx_v`` keep each row's context keys (unrotated,
    ``dtype``) and values for moving it.

    Beside the attention state, each rollout carries what its next slot reads: with
    ``state_dim``, ``state (B, state_dim)`` its latest state, normalised (valid where
    ``has_state``); and the event latent (models with one,
    :mod:`wmgym.model.event_latent`): ``event_run`` triggering commands in a row, ``event``
    the latent, ``event_u`` this frame's uniform draw for an event that begins, and
    ``event_doubt`` the chance that an event beginning this frame ends otherwise in reality,
    ``2 p (1 - p)`` for a head's probability ``p`` of success (0 where none begins).

    Args:
        n_layer: Transformer blocks.
        batch_size: Rollouts.
        n_head: Key/value heads.
        max_len: The longest a row's content gets (context plus a full window of blocks): the
            ring's capacity.
        head_dim: Channels per head.
        device: Where the buffers live.
        dtype: The model's dtype (``ctx_k``).
        n_ctx: Context tokens per row.
        block: Positions per (slot + frame) block.
        state_dim: See above (0: none).
        kv_dtype: dtype of ``k`` and ``v`` (``None``: ``dtype``).
    """

    def __init__(self, n_layer: int, batch_size: int, n_head: int, max_len: int, head_dim: int,
                 device: torch.device | str, dtype: torch.dtype, *, n_ctx: int, block: int,
                 state_dim: int = 0, kv_dtype: torch.dtype | None = None) -> None:
        if not 0 < n_ctx <= max_len or block < 1:
            raise ValueError(f"bad cache layout: n_ctx={n_ctx}, block={block}, max_len={max_len}")
        self.capacity = max_len
        shape = (n_layer, batch_size, n_head, self.capacity, head_dim)
        # keys live channel-major, ``k`` is a transposed view: see the class docstring
        self.k = torch.zeros(shape[:3] + (head_dim, self.capacity), device=device,
                             dtype=kv_dtype or dtype).transpose(-1, -2)
        self.v = torch.zeros(shape, device=device, dtype=self.k.dtype)
        self.ctx_k = torch.zeros(n_layer, batch_size, n_head, n_ctx, head_dim, device=device,
                                 dtype=dtype)
        self.ctx_v = torch.zeros_like(self.ctx_k, dtype=self.k.dtype)
        self.capturing = False  # a prefill in progress: keep the context's keys unrotated
        self.batch_size, self.max_len, self.n_ctx, self.block = batch_size, max_len, n_ctx, block
        self.start = torch.zeros(batch_size, dtype=torch.long, device=device)
        self.n_frames = torch.zeros_like(self.start)
        self.rows = torch.arange(batch_size, device=device)
        self.slots = torch.arange(self.capacity, device=device)
        self.end = 0  # logical position of the next tokens, common to all rows (host int)
        self.start_min = 0  # min(start), on the host
        self.uniform = True  # all rows start at start_min: one mask serves the batch
        self.noise: Tensor | None = None  # per-frame sampling noise buffer, made on first use
        self.state = torch.zeros(batch_size, state_dim, device=device)
        self.has_state = torch.zeros(batch_size, dtype=torch.bool, device=device)
        self.event_run = torch.zeros_like(self.start)
        self.event = torch.zeros_like(self.start)
        self.event_u = torch.full((batch_size,), 0.5, device=device)
        self.event_doubt = torch.zeros(batch_size, device=device)

    def forget(self, rows: Tensor | None = None) -> None:
        """Clear what the next slot of ``rows`` (all if ``None``) reads: state and event."""
        rows = self.rows if rows is None else rows
        self.has_state[rows] = False
        self.event_run[rows] = 0
        self.event[rows] = 0
        self.event_doubt[rows] = 0

    def restart(self, rows: Tensor, fresh: KVCache, inv_freq: Tensor) -> None:
        """Restart ``rows`` from ``fresh``, a cache holding just their contexts.

        Each context goes right before ``end``; the rows' frames, state and event are gone.
        """
        self.ctx_k[:, rows], self.ctx_v[:, rows] = fresh.ctx_k, fresh.ctx_v
        self.start[rows] = self.end - self.n_ctx
        self.place_context(rows, inv_freq)
        self.n_frames[rows] = 0
        self.forget(rows)
        self.sync()

    def drop_oldest(self, full: Tensor, inv_freq: Tensor) -> None:
        """Drop the oldest frame of the rows where ``full`` (bool ``(B,)``).

        Each moves its context one block forward over the frame (see the module docstring);
        the next frame goes into the ring slots it freed.
        """
        n_full = int(full.sum())
        if n_full:
            rows = None if n_full == self.batch_size else full.nonzero().squeeze(1)
            self.start[full] += self.block
            self.n_frames[full] -= 1
            self.sync()
            self.place_context(rows, inv_freq)

    def draw(self, generators: list[torch.Generator] | None, shape: tuple[int, int, int],
             device: torch.device, event: bool) -> Tensor:
        """A frame's Gumbel noise ``shape = (B, n, V)`` on ``device`` (and event uniforms).

        With ``event`` one uniform per row goes into ``event_u``. Row ``i`` draws its noise in
        one call on ``generators[i]``, then its event uniform, so its draws do not depend on
        the rest of the batch (``None``: the global RNG).
        """
        src = generators[0].device if generators else device
        if self.noise is None or self.noise.shape != shape or self.noise.device != src:
            self.noise = torch.empty(shape, device=src)
        if generators is None:
            self.noise.uniform_()
        else:
            if len(generators) != shape[0]:
                raise ValueError(f"need one generator per sample: {len(generators)} != "
                                 f"{shape[0]}")
            for i, g in enumerate(generators):
                self.noise[i].uniform_(generator=g)
        u = self.noise.to(device)  # in place below: 4 fewer (B, n, V) buffers
        gumbel = u.clamp_(1e-10, 1.0 - 1e-7).log_().neg_().log_().neg_()
        if event:
            if generators is None:
                self.event_u.uniform_()
            else:
                draws = [torch.rand(1, generator=g, device=g.device) for g in generators]
                self.event_u.copy_(torch.cat(draws).to(self.event_u.device))
        return gumbel

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
        self.end = self.start_min = 0
        self.uniform = True

    def _ring(self, lo: int, n: int) -> list[tuple[slice, slice]]:
        """``(source, slot)`` slice pairs of logical positions ``[lo, lo + n)`` on the ring."""
        s = lo % self.capacity
        first = min(n, self.capacity - s)
        pairs = [(slice(0, first), slice(s, s + first))]
        if first < n:
            pairs.append((slice(first, n), slice(0, n - first)))
        return pairs

    def _rotated(self, k: Tensor, cos: Tensor, sin: Tensor) -> Tensor:
        """Keys ``k`` rotated in contiguous memory, in ``k``'s precision, for one strided write.

        With the cache's dtype they are rotated by a multiply and an ``addcmul_`` (the values
        that rotating straight into the cache gave, bit for bit); otherwise rounded once after.
        """
        if k.dtype == self.k.dtype:
            return apply_rope(k, cos, sin, out=torch.empty_like(k))
        return apply_rope(k, cos, sin)

    def append(self, layer: int, k: Tensor, v: Tensor, cos: Tensor, sin: Tensor
               ) -> tuple[Tensor, Tensor]:
        """Store a pass's ``t`` new keys (rotated here) and values ``(B, H, t, hd)`` at ``end``.

        Returns the layer's whole ring of keys and values ``(B, H, capacity, hd)``, new tokens
        included (see :meth:`attn_bias` for what each query may see of it).
        """
        t = k.shape[2]
        if self.capturing:
            self.ctx_k[layer, :, :, self.end : self.end + t] = k
            self.ctx_v[layer, :, :, self.end : self.end + t] = v
        for src, dst in self._ring(self.end, t):
            self.k[layer, :, :, dst] = self._rotated(k[:, :, src], cos[src], sin[src])
            self.v[layer, :, :, dst] = v[:, :, src]
        return self.k[layer], self.v[layer]

    def attn_bias(self, t: int) -> Tensor | None:
        """What a pass of ``t`` new tokens per row may see of the ring, as an additive bias.

        Slot ``s`` then holds logical position ``l(s)``, the latest one ``< end + t`` that maps
        to it; new token ``i`` sees ``start[b] <= l(s) <= end + i``. Returns ``None`` when it
        sees the whole ring, else float32 ``(1 or B, 1, t, capacity)`` of ``0`` and ``-inf``.
        """
        hi = self.end + t
        if self.uniform and t == 1 and hi - self.start_min >= self.capacity:
            return None
        logical = hi - 1 - (hi - 1 - self.slots) % self.capacity  # (C,)
        seen = logical <= self.end + self.slots[:t, None]  # (t, C): causal among the new ones
        first = self.start[:, None, None, None] if not self.uniform else self.start_min
        seen = (seen & (logical >= first))
        if seen.dim() == 2:
            seen = seen[None, None]
        bias = torch.zeros(seen.shape, device=seen.device)
        return bias.masked_fill_(~seen, float("-inf"))

    def place_context(self, rows: Tensor | None, inv_freq: Tensor) -> None:
        """Write the context of ``rows`` (all if ``None``) at ``[start, start + n_ctx)``.

        Its keys are rotated from ``ctx_k`` at those logical positions.
        """
        nc = self.n_ctx
        if rows is None and self.uniform:
            s = self.start_min
            cos, sin = rope_at(self.slots[:nc] + s, inv_freq, self.ctx_k.dtype)
            for src, dst in self._ring(s, nc):
                self.k[:, :, :, dst] = self._rotated(self.ctx_k[:, :, :, src], cos[src], sin[src])
                self.v[:, :, :, dst] = self.ctx_v[:, :, :, src]
            return
        rows = self.rows if rows is None else rows
        pos = self.start[rows, None] + self.slots[:nc]  # (r, nc) logical
        cos, sin = rope_at(pos, inv_freq, self.ctx_k.dtype)
        rot = apply_rope(self.ctx_k[:, rows], cos[:, None], sin[:, None])  # (layer, r, H, nc, hd)
        index = (slice(None), rows[:, None], slice(None), pos % self.capacity)  # (r, nc, L, H, hd)
        self.k[index] = rot.permute(1, 3, 0, 2, 4).to(self.k.dtype)
        self.v[index] = self.ctx_v[:, rows].permute(1, 3, 0, 2, 4)
