"""DynamicsTransformer: a LLaMA-style decoder-only transformer over tokenized trajectories.

One sample is the sequence::

    [ctx tokens (Nc)] [S+a_1] [f_1 (n)] [S+a_2] [f_2 (n)] ... [S+a_T] [f_T (n)]

``S`` is a learned slot embedding; action ``a_t`` enters through a zero-initialised linear map
added to it. The slot predicts ``f_t[0]`` and ``f_t[i]`` predicts ``f_t[i+1]``. Heads on the last
token of ``f_t`` predict reward (symlog space), success (logit) and the state vector reached
after ``a_t``.

Inference uses a preallocated :class:`KVCache`: ``prefill`` the context, then call
``generate_frame`` once per env step (``prefill(..., index=rows)`` restarts some rollouts only).
When a row's window of ``max_frames`` frames is full its oldest frame is dropped by moving the
row's context forward over it; no frame's keys are moved or rotated again per step, so rollouts
of any length run at a steady per-step cost (layout in :mod:`wmgym.model.kv_cache`).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from wmgym.model.grasp_latent import GraspHead, advance
from wmgym.model.kv_cache import (
    KVCache,
    apply_rope,
    cached_attention,
    rope_at,
    rope_inv_freq,
    rope_tables,
)
from wmgym.spec import CUBE_POS, EEF_POS, GRIP

#: Unit of the offset input (metres): about where a grasp stops holding.
OFFSET_SCALE = 0.02

__all__ = ["DynamicsConfig", "DynamicsOutput", "DynamicsTransformer", "FrameSample", "KVCache",
           "apply_rope", "rope_at", "rope_tables", "symexp", "symlog"]


@dataclass
class DynamicsConfig:
    """Hyper-parameters of :class:`DynamicsTransformer`."""

    ctx_vocab_size: int = 1000  # context-token vocabulary (tokenizer.ctx_vocab_size)
    vocab_size: int = 1000  # future-token vocabulary (tokenizer.future_vocab_size)
    n_ctx_tokens: int = 64  # tokens per context frame
    n_frame_tokens: int = 16  # tokens per future frame
    max_frames: int = 16  # future frames in the attention window (training length)
    d_model: int = 256  # residual stream width
    n_layer: int = 4  # transformer blocks
    n_head: int = 4  # attention heads
    # Key/value heads (grouped-query attention): each serves n_head // n_kv_head query heads.
    # None: one per query head. Fewer shrink what every cached pass reads by the same factor.
    n_kv_head: int | None = None
    action_dim: int = 4  # action size
    state_dim: int = 8  # privileged state size
    dropout: float = 0.0  # dropout on attention weights and residual branches
    rope_theta: float = 10000.0  # RoPE base
    mlp_hidden: int = 704  # SwiGLU hidden width (~8/3 d_model, multiple of 64)
    norm_eps: float = 1e-5  # RMSNorm epsilon
    w_token: float = 1.0  # loss weight: token cross-entropy
    w_reward: float = 1.0  # loss weight: reward MSE in symlog space
    w_success: float = 1.0  # loss weight: success BCE
    w_state: float = 1.0  # loss weight: normalised state MSE
    # A learned vector on the slot tokens of frames that do not follow the context directly
    # (clips cut from later in an episode; the sliding window in long rollouts). Without it the
    # first imagined frame cannot tell "one step after the context" from "many steps after".
    gap_embedding: bool = False
    # A second way to sample a frame: :class:`ParallelHead` predicts its n tokens at once from the
    # slot's hidden state, reading the context's and the previous frame's hidden states. A frame
    # then costs 2 passes over the cache (slot; the sampled tokens) instead of n + 1.
    parallel_head: bool = False
    head_layers: int = 2  # blocks of the parallel head
    w_parallel: float = 1.0  # loss weight: the parallel head's token cross-entropy
    # A recurrent state head (:class:`StateFilter`): a frame's state is the previous frame's plus
    # a correction read from the frame's last hidden state and the action, instead of being read
    # afresh from the frame. Fitted on the model's own rollouts by ``wmgym train state-filter``.
    state_filter: bool = False
    # What the filter's state drives: "state" (the state seen, the slots' state input and the
    # grasp head's), or "grasp" (the grasp head's alone; the state seen and the slots' input
    # stay the plain head's reading, so frames and state agree as without a filter).
    filter_drives: str = "state"
    filter_hidden: int = 256  # hidden width of the state filter's MLP
    # The previous frame's state on each slot, through a zero-initialised linear map like the
    # action: the real state in training, in imagination the context's real state and then the
    # model's own readings. Frames can then follow the gripper and cube positions to the
    # millimetre instead of recovering them from 16 coarse tokens.
    state_input: bool = False
    # With state_input: also the gripper's offset from the cube (x, y, z and the horizontal
    # distance, in units of OFFSET_SCALE) through its own zero-initialised map. Whether a grasp
    # holds turns on a centimetre of it, which a linear map of the normalised state leaves the
    # blocks to compute.
    offset_input: bool = False
    # With state_input: an explicit grasp latent (:mod:`wmgym.model.grasp_latent`). When a grasp
    # begins, a head reads off the state whether it holds and draws a hold/slip bit once; a
    # learned vector for it is on every slot of the grasp. In training the bit is the grasp's
    # real outcome.
    grasp_latent: bool = False
    state_noise: float = 0.1  # std of the noise on the training state input (normalised units)
    state_dropout: float = 0.1  # share of training clips given no state input (as in a restart)

    def __post_init__(self) -> None:
        if self.filter_drives not in ("state", "grasp"):
            raise ValueError(f"filter_drives must be 'state' or 'grasp', got "
                             f"{self.filter_drives!r}")
        if self.filter_drives == "grasp" and not (self.state_filter and self.grasp_latent):
            raise ValueError("filter_drives='grasp' needs a state filter and the grasp latent")

    @property
    def kv_heads(self) -> int:
        """Key/value heads (``n_kv_head``, or ``n_head`` when unset)."""
        return self.n_head if self.n_kv_head is None else self.n_kv_head

    @property
    def head_dim(self) -> int:
        """Channels per attention head."""
        return self.d_model // self.n_head

    @property
    def max_seq_len(self) -> int:
        """Context plus a full window of (slot + frame) blocks."""
        return self.n_ctx_tokens + self.max_frames * (self.n_frame_tokens + 1)


class DynamicsOutput(NamedTuple):
    """Outputs of a full forward over ``T`` frames."""

    logits: Tensor  # (B, T, n, V) future-token logits
    reward: Tensor  # (B, T) predicted reward (real units, symexp of the head)
    success_logit: Tensor  # (B, T)
    state: Tensor  # (B, T, state_dim) predicted state (real units)


class FrameSample(NamedTuple):
    """One generated (or teacher-forced) frame for a batch of rollouts."""

    tokens: Tensor  # (B, n) long
    reward: Tensor  # (B,) real units
    success_logit: Tensor  # (B,)
    state: Tensor  # (B, state_dim) real units
    entropy: Tensor  # (B,) mean entropy (nats) of the model's token distributions in the frame


def symlog(x: Tensor) -> Tensor:
    """``sign(x) * log(1 + |x|)``."""
    return torch.sign(x) * torch.log1p(x.abs())


def symexp(x: Tensor) -> Tensor:
    """Inverse of :func:`symlog`."""
    return torch.sign(x) * torch.expm1(x.abs())


# ----------------------------------------------------------------------------- blocks


class RMSNorm(nn.Module):
    def __init__(self, dim: int, eps: float) -> None:
        super().__init__()
        self.weight, self.eps = nn.Parameter(torch.ones(dim)), eps

    def forward(self, x: Tensor) -> Tensor:
        return F.rms_norm(x, (x.shape[-1],), self.weight, self.eps)


class Attention(nn.Module):
    """Causal multi-head self-attention with RoPE, optionally reading/writing a KV cache."""

    def __init__(self, cfg: DynamicsConfig) -> None:
        super().__init__()
        self.n_head, self.n_kv, self.head_dim = cfg.n_head, cfg.kv_heads, cfg.head_dim
        self.qkv = nn.Linear(cfg.d_model, (cfg.n_head + 2 * cfg.kv_heads) * cfg.head_dim,
                             bias=False)
        self.proj = nn.Linear(cfg.d_model, cfg.d_model, bias=False)
        self.dropout = cfg.dropout

    def forward(self, x: Tensor, cos: Tensor, sin: Tensor, cache: KVCache | None = None,
                layer: int = 0, mask: Tensor | None = None) -> Tensor:
        """Attend over ``x (B, t, d)``, or with ``cache`` over the cache plus ``x``.

        With a cache, the ``t`` new tokens of every row go at the cache's ``end`` and attend to
        the cache's whole ring (:meth:`KVCache.append`); ``mask`` is then the additive bias of
        :meth:`KVCache.attn_bias`. Without, ``mask`` is ``None`` (plain causal). ``cos, sin``
        are ``(t, hd/2)``.
        """
        b, t, d = x.shape
        heads = self.qkv(x).view(b, t, self.n_head + 2 * self.n_kv, self.head_dim)
        q, k, v = heads.transpose(1, 2).split([self.n_head, self.n_kv, self.n_kv], dim=1)
        q = apply_rope(q, cos, sin)
        if cache is None:
            p = self.dropout if self.training else 0.0
            y = F.scaled_dot_product_attention(q, apply_rope(k, cos, sin), v, dropout_p=p,
                                               is_causal=t > 1,
                                               enable_gqa=self.n_kv != self.n_head)
        else:
            y = cached_attention(q, *cache.append(layer, k, v, cos, sin), mask)
        return self.proj(y.to(x.dtype).transpose(1, 2).reshape(b, t, d))


class SwiGLU(nn.Module):
    def __init__(self, cfg: DynamicsConfig) -> None:
        super().__init__()
        self.gate_up = nn.Linear(cfg.d_model, 2 * cfg.mlp_hidden, bias=False)
        self.down = nn.Linear(cfg.mlp_hidden, cfg.d_model, bias=False)

    def forward(self, x: Tensor) -> Tensor:
        gate, up = self.gate_up(x).chunk(2, dim=-1)
        return self.down(F.silu(gate) * up)


class Block(nn.Module):
    def __init__(self, cfg: DynamicsConfig) -> None:
        super().__init__()
        self.attn_norm, self.attn = RMSNorm(cfg.d_model, cfg.norm_eps), Attention(cfg)
        self.mlp_norm, self.mlp = RMSNorm(cfg.d_model, cfg.norm_eps), SwiGLU(cfg)
        self.drop = nn.Dropout(cfg.dropout)

    def forward(self, x: Tensor, cos: Tensor, sin: Tensor, cache: KVCache | None = None,
                layer: int = 0, mask: Tensor | None = None) -> Tensor:
        x = x + self.drop(self.attn(self.attn_norm(x), cos, sin, cache, layer, mask))
        return x + self.drop(self.mlp(self.mlp_norm(x)))


class HeadBlock(nn.Module):
    """Queries attend to themselves and to a memory of hidden states, then a SwiGLU MLP.

    The memory comes in two parts: ``ctx (G, Mc, d)``, shared by the ``N / G`` consecutive
    query rows of each group (a training sample's frames share its context: its keys and
    values are computed once), and ``prev (N, Mp, d)``, one per row, valid where ``prev_ok``.
    """

    def __init__(self, cfg: DynamicsConfig) -> None:
        super().__init__()
        d = cfg.d_model
        self.n_head, self.head_dim = cfg.n_head, d // cfg.n_head
        self.norm, self.mem_norm = RMSNorm(d, cfg.norm_eps), RMSNorm(d, cfg.norm_eps)
        self.q = nn.Linear(d, d, bias=False)
        self.kv = nn.Linear(d, 2 * d, bias=False)
        self.proj = nn.Linear(d, d, bias=False)
        self.mlp_norm, self.mlp = RMSNorm(d, cfg.norm_eps), SwiGLU(cfg)

    def _heads(self, x: Tensor) -> Tensor:
        return x.view(x.shape[0], x.shape[1], self.n_head, self.head_dim).transpose(1, 2)

    def forward(self, x: Tensor, ctx: Tensor, prev: Tensor, prev_ok: Tensor) -> Tensor:
        n_rows, n, d = x.shape
        h = self.norm(x)
        kv_ctx = self.kv(self.mem_norm(ctx)).repeat_interleave(n_rows // ctx.shape[0], 0)
        kv = torch.cat([self.kv(h), kv_ctx, self.kv(self.mem_norm(prev))], 1)
        k, v = (self._heads(t) for t in kv.chunk(2, dim=-1))
        keys_ok = torch.cat([prev_ok.new_ones(n_rows, n + ctx.shape[1]),
                             prev_ok[:, None].expand(n_rows, prev.shape[1])], 1)
        y = F.scaled_dot_product_attention(self._heads(self.q(h)), k, v,
                                           attn_mask=keys_ok[:, None, None])
        x = x + self.proj(y.transpose(1, 2).reshape(n_rows, n, d))
        return x + self.mlp(self.mlp_norm(x))


class ParallelHead(nn.Module):
    """All ``n`` tokens of a frame at once: ``n`` queries seeded with the slot's hidden state.

    The queries attend to each other and to a memory: the final hidden states of the context's
    tokens and of the previous frame's tokens (masked out before the first frame). Tokens are
    then sampled independently, which suits a near-deterministic scene; the autoregressive path
    remains for when they are not.
    """

    def __init__(self, cfg: DynamicsConfig) -> None:
        super().__init__()
        d, n = cfg.d_model, cfg.n_frame_tokens
        self.n_ctx = cfg.n_ctx_tokens
        self.query_pos = nn.Parameter(torch.randn(n, d) * 0.02)
        self.memory_pos = nn.Parameter(torch.randn(cfg.n_ctx_tokens + n, d) * 0.02)
        self.blocks = nn.ModuleList(HeadBlock(cfg) for _ in range(cfg.head_layers))
        self.norm = RMSNorm(d, cfg.norm_eps)

    def forward(self, slot: Tensor, ctx: Tensor, prev: Tensor, prev_ok: Tensor) -> Tensor:
        """Query states ``(N, n, d)`` of slots ``(N, d)``.

        ``ctx (G, Nc, d)`` is shared by groups of ``N / G`` rows; ``prev (N, n, d)`` is valid
        where ``prev_ok (N,)``.
        """
        x = slot[:, None] + self.query_pos
        ctx, prev = ctx + self.memory_pos[: self.n_ctx], prev + self.memory_pos[self.n_ctx :]
        for block in self.blocks:
            x = block(x, ctx, prev, prev_ok)
        return self.norm(x)


class StateFilter(nn.Module):
    """The state of a frame from the previous state, the action and the frame's hidden state.

    ``new = prev + MLP([h, prev, last_delta, absolute - prev, action])`` in normalised units,
    where ``last_delta`` is the previous step's change (the motion under way) and ``absolute``
    the plain state head's reading of the same frame. The last layer starts at zero, so an
    untrained filter holds the state still. Chained from a real state, it keeps what the frame
    leaves unchanged and learns how far to trust the frame's own reading.
    """

    def __init__(self, cfg: DynamicsConfig) -> None:
        super().__init__()
        s, w = cfg.state_dim, cfg.filter_hidden
        self.mlp = nn.Sequential(nn.Linear(cfg.d_model + 3 * s + cfg.action_dim, w), nn.SiLU(),
                                 nn.Linear(w, w), nn.SiLU(), nn.Linear(w, s))

    def forward(self, h: Tensor, prev: Tensor, last_delta: Tensor, absolute: Tensor,
                action: Tensor) -> Tensor:
        """Normalised state ``(B, s)`` from hidden ``(B, d)``, states ``(B, s)``, action."""
        x = torch.cat([h, prev, last_delta, absolute.detach() - prev, action], -1)
        return prev + self.mlp(x.to(h.dtype)).to(prev.dtype)

    def unroll(self, h: Tensor, first_prev: Tensor, absolute: Tensor, actions: Tensor) -> Tensor:
        """States ``(B, T, s)`` of frames with hidden ``(B, T, d)``, chained from ``first_prev``.

        The chain starts at rest (no motion under way), as after :meth:`~DynamicsTransformer.
        set_state`.
        """
        prev, delta, out = first_prev, torch.zeros_like(first_prev), []
        for t in range(h.shape[1]):
            new = self(h[:, t], prev, delta, absolute[:, t], actions[:, t])
            prev, delta = new, new - prev
            out.append(new)
        return torch.stack(out, 1)


# ----------------------------------------------------------------------------- model


class DynamicsTransformer(nn.Module):
    """Autoregressive dynamics over future-frame tokens, conditioned on context and actions.

    Args:
        cfg: Model config.

    """

    def __init__(self, cfg: DynamicsConfig) -> None:
        super().__init__()
        assert cfg.d_model % cfg.n_head == 0 and (cfg.d_model // cfg.n_head) % 2 == 0
        if not 0 < cfg.kv_heads <= cfg.n_head or cfg.n_head % cfg.kv_heads:
            raise ValueError(f"n_kv_head={cfg.n_kv_head} must divide n_head={cfg.n_head}")
        self.cfg = cfg
        d, n = cfg.d_model, cfg.n_frame_tokens
        self.ctx_emb = nn.Embedding(cfg.ctx_vocab_size, d)
        self.tok_emb = nn.Embedding(cfg.vocab_size, d)
        self.frame_pos = nn.Parameter(torch.zeros(n, d))  # index of a token within its frame
        self.slot = nn.Parameter(torch.zeros(d))
        self.action_proj = nn.Linear(cfg.action_dim, d)
        if cfg.gap_embedding:
            self.gap_emb = nn.Parameter(torch.zeros(d))
        self.blocks = nn.ModuleList(Block(cfg) for _ in range(cfg.n_layer))
        self.norm = RMSNorm(d, cfg.norm_eps)
        self.lm_head = nn.Linear(d, cfg.vocab_size, bias=False)
        self.aux_head = nn.Linear(d, 2 + cfg.state_dim)  # [reward (symlog), success, state...]
        self.head = ParallelHead(cfg) if cfg.parallel_head else None
        self.state_filter = StateFilter(cfg) if cfg.state_filter else None
        self.state_proj = nn.Linear(cfg.state_dim, d) if cfg.state_input else None
        if cfg.offset_input and not cfg.state_input:
            raise ValueError("offset_input needs state_input: the offset is read off the state")
        self.offset_proj = nn.Linear(4, d) if cfg.offset_input else None
        if cfg.grasp_latent and not cfg.state_input:
            raise ValueError("grasp_latent needs state_input: its head reads the state")
        # hold, slip; zero at first like the other slot inputs ("no effect")
        self.grasp_emb = nn.Parameter(torch.zeros(2, d)) if cfg.grasp_latent else None
        self.grasp_head = GraspHead() if cfg.grasp_latent else None
        self.register_buffer("state_mean", torch.zeros(cfg.state_dim))
        self.register_buffer("state_std", torch.ones(cfg.state_dim))
        cos, sin = rope_tables(cfg.max_seq_len, cfg.head_dim, cfg.rope_theta)
        self.register_buffer("rope_cos", cos, persistent=False)
        self.register_buffer("rope_sin", sin, persistent=False)
        self.register_buffer("rope_inv_freq", rope_inv_freq(cfg.head_dim, cfg.rope_theta),
                             persistent=False)
        self.apply(self._init_weights)
        for name, p in self.named_parameters():
            residual_out = name.endswith(("attn.proj.weight", "mlp.down.weight")) or (
                name.startswith("head.") and name.endswith(".proj.weight"))
            if residual_out:
                nn.init.normal_(p, std=0.02 / math.sqrt(2 * cfg.n_layer))
        nn.init.normal_(self.frame_pos, std=0.02)
        nn.init.normal_(self.slot, std=0.02)
        if cfg.gap_embedding:  # as large as the slot from the start: the flag must be visible
            nn.init.normal_(self.gap_emb, std=0.02)
        if self.state_filter is not None:  # starts as "the state stays as it was"
            nn.init.zeros_(self.state_filter.mlp[-1].weight)
        for proj in (self.action_proj, self.state_proj, self.offset_proj):  # "no effect" at first
            if proj is not None:
                nn.init.zeros_(proj.weight)
                nn.init.zeros_(proj.bias)

    @staticmethod
    def _init_weights(m: nn.Module) -> None:
        if isinstance(m, (nn.Linear, nn.Embedding)):
            nn.init.normal_(m.weight, std=0.02)
        if isinstance(m, nn.Linear) and m.bias is not None:
            nn.init.zeros_(m.bias)

    def set_state_normalization(self, mean: Tensor, std: Tensor) -> None:
        """Set the statistics used to normalise state targets and de-normalise predictions."""
        self.state_mean.copy_(torch.as_tensor(mean))
        self.state_std.copy_(torch.as_tensor(std).clamp_min(1e-6))

    def normalize_state(self, state: Tensor) -> Tensor:
        """Raw state (real units) -> the normalised units of the state heads."""
        return (state - self.state_mean) / self.state_std

    def _decode_aux(self, aux: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        reward = symexp(aux[..., 0])
        return reward, aux[..., 1], aux[..., 2:] * self.state_std + self.state_mean

    # --------------------------------------------------------------------- training

    def _slots(self, actions: Tensor, gap: Tensor | None, prev_state: Tensor | None = None,
               known: Tensor | None = None, grasp: Tensor | None = None) -> Tensor:
        """Slot tokens ``(..., d)``: the slot, the action, the gap flag, the state and the grasp.

        The gap flag is per sample; with ``state_input``, ``prev_state`` is the previous frame's
        normalised state, added where ``known`` (per sample); with ``grasp_latent``, ``grasp``
        (long, shaped like ``actions`` without its last axis) is each slot's grasp latent.
        """
        x = self.slot + self.action_proj(actions.to(self.slot.dtype))

        def per_sample(flag: Tensor) -> Tensor:  # (B,) -> broadcastable over (B, ..., d)
            return flag.to(x.dtype).view(-1, *([1] * (x.dim() - 1)))

        if gap is not None and self.cfg.gap_embedding:
            x = x + per_sample(gap) * self.gap_emb
        if self.state_proj is not None and prev_state is not None:
            s = self.state_proj(prev_state.to(x.dtype))
            if self.offset_proj is not None:
                s = s + self.offset_proj(self._offset(prev_state).to(x.dtype))
            x = x + (s if known is None else per_sample(known) * s)
        if self.grasp_emb is not None and grasp is not None:
            x = x + torch.cat([self.grasp_emb.new_zeros(1, x.shape[-1]), self.grasp_emb]
                              ).to(x.dtype)[grasp]
        return x

    def grasp_features(self, state: Tensor) -> Tensor:
        """The grasp head's inputs from a normalised state ``(..., state_dim)``: ``(..., 6)``.

        The gripper's offset from the cube (:meth:`_offset`) and the two finger joints.
        """
        return torch.cat([self._offset(state), state[..., GRIP].float()], -1)

    def _offset(self, state: Tensor) -> Tensor:
        """The gripper's offset from the cube in a normalised state ``(..., state_dim)``.

        Returns ``(..., 4)``: x, y, z and the horizontal distance, in units of ``OFFSET_SCALE``.
        """
        raw = state.float() * self.state_std + self.state_mean
        d = (raw[..., EEF_POS] - raw[..., CUBE_POS]) / OFFSET_SCALE
        return torch.cat([d, d[..., :2].norm(dim=-1, keepdim=True)], -1)

    def _state_input(self, prev_state: Tensor | None, b: int
                     ) -> tuple[Tensor | None, Tensor | None]:
        """The normalised state input of a teacher-forced pass and which clips get it.

        While training it is noised (``state_noise``) and dropped per clip (``state_dropout``).
        """
        if self.state_proj is None:
            return None, None
        if prev_state is None:
            raise ValueError("this model takes the state: pass prev_state (B, T, state_dim)")
        s = self.normalize_state(prev_state)
        known = torch.ones(b, dtype=torch.bool, device=s.device)
        if self.training:
            s = s + self.cfg.state_noise * torch.randn_like(s)
            known = torch.rand(b, device=s.device) >= self.cfg.state_dropout
        return s, known

    def _hidden(self, ctx_tokens: Tensor, frame_tokens: Tensor, actions: Tensor,
                gap: Tensor | None = None, prev_state: Tensor | None = None,
                grasp: Tensor | None = None) -> tuple[Tensor, Tensor]:
        """Final-norm hidden states: context ``(B, Nc, d)``, frames ``(B, T, n + 1, d)``."""
        b, t, n = frame_tokens.shape
        if t > self.cfg.max_frames:
            raise ValueError(f"{t} frames exceed the window of max_frames={self.cfg.max_frames}")
        slots = self._slots(actions, gap, *self._state_input(prev_state, b), grasp).unsqueeze(2)
        frames = self.tok_emb(frame_tokens) + self.frame_pos  # (B, T, n, d)
        x = torch.cat([self.ctx_emb(ctx_tokens), torch.cat([slots, frames], 2).flatten(1, 2)], 1)
        cos, sin = self.rope_cos[: x.shape[1]], self.rope_sin[: x.shape[1]]
        for block in self.blocks:
            x = block(x, cos, sin)
        x = self.norm(x)
        nc = ctx_tokens.shape[1]
        return x[:, :nc], x[:, nc:].view(b, t, n + 1, -1)

    def _parallel_logits(self, ctx_h: Tensor, h: Tensor) -> Tensor:
        """The parallel head's logits ``(B, T, n, V)`` for every frame of a teacher-forced pass.

        Frame ``t`` reads the slot of ``t``, the context and frame ``t - 1`` (none for ``t = 0``),
        exactly what :meth:`generate_frame` gives it from the cache.
        """
        b, t, n1, d = h.shape
        prev = torch.cat([h.new_zeros(b, 1, n1 - 1, d), h[:, :-1, 1:]], 1)
        prev_ok = torch.ones(b, t, dtype=torch.bool, device=h.device)
        prev_ok[:, 0] = False
        out = self.head(h[:, :, 0].flatten(0, 1), ctx_h, prev.flatten(0, 1), prev_ok.flatten())
        return self.lm_head(out).view(b, t, n1 - 1, -1)

    def forward(self, ctx_tokens: Tensor, frame_tokens: Tensor, actions: Tensor,
                gap: Tensor | None = None, prev_state: Tensor | None = None,
                grasp: Tensor | None = None) -> DynamicsOutput:
        """Teacher-forced forward.

        Args:
            ctx_tokens: ``(B, Nc)`` context tokens.
            frame_tokens: ``(B, T, n)`` future tokens, ``T <= max_frames``.
            actions: ``(B, T, action_dim)``; ``actions[:, t]`` leads to ``frame_tokens[:, t]``.
            gap: ``(B,)``: 1 where the first frame does not follow the context directly.
            prev_state: ``(B, T, state_dim)`` raw state before frame ``t`` (``state_input``).
            grasp: ``(B, T)`` long grasp latent on frame ``t``'s slot (``grasp_latent``; none
                when ``None``).

        Returns:
            :class:`DynamicsOutput`.

        """
        _, _, logits, aux = self.raw_outputs(ctx_tokens, frame_tokens, actions, gap, prev_state,
                                             grasp)
        return DynamicsOutput(logits, *self._decode_aux(aux))

    def raw_outputs(self, ctx_tokens: Tensor, frame_tokens: Tensor, actions: Tensor,
                    gap: Tensor | None = None, prev_state: Tensor | None = None,
                    grasp: Tensor | None = None) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        """A teacher-forced pass (arguments as :meth:`forward`), before the heads' decoding.

        Returns:
            ``(context hidden (B, Nc, d), frame hidden (B, T, n + 1, d), token logits
            (B, T, n, V), head outputs (B, T, 2 + state_dim))``; the head outputs are reward
            in symlog space, the success logit and the normalised state.
        """
        ctx_h, h = self._hidden(ctx_tokens, frame_tokens, actions, gap, prev_state, grasp)
        n = frame_tokens.shape[-1]
        return ctx_h, h, self.lm_head(h[:, :, :n]), self.aux_head(h[:, :, n])

    def loss(self, ctx_tokens: Tensor, frame_tokens: Tensor, actions: Tensor, reward: Tensor,
             success: Tensor, state: Tensor, valid: Tensor | None = None,
             gap: Tensor | None = None, prev_state: Tensor | None = None,
             grasp: Tensor | None = None) -> tuple[Tensor, dict[str, float]]:
        """Token cross-entropy + reward symlog MSE + success BCE + normalised state MSE.

        With a parallel head, its token cross-entropy is added too. A state filter is not
        trained here (see :mod:`wmgym.train.state_filter`).

        Args:
            ctx_tokens: ``(B, Nc)``.
            frame_tokens: ``(B, T, n)``.
            actions: ``(B, T, action_dim)``.
            reward: ``(B, T)`` reward received for reaching frame ``t``.
            success: ``(B, T)`` success flag of frame ``t`` (bool or float).
            state: ``(B, T, state_dim)`` raw state of frame ``t``.
            valid: Optional ``(B, T)`` mask of real (non-padding) frames.
            gap: Optional ``(B,)``: 1 where the first frame does not follow the context directly.
            prev_state: ``(B, T, state_dim)`` raw state before frame ``t`` (``state_input``).
            grasp: ``(B, T)`` the real grasp latent on each slot (``grasp_latent``).

        Returns:
            ``(scalar loss, metrics)``.

        """
        cfg = self.cfg
        ctx_h, h, logits, aux = self.raw_outputs(ctx_tokens, frame_tokens, actions, gap,
                                                 prev_state, grasp)
        w = torch.ones_like(reward) if valid is None else valid.to(reward.dtype)
        denom = w.sum().clamp_min(1.0)

        def token_ce(lg: Tensor) -> Tensor:
            return F.cross_entropy(lg.flatten(0, 2).float(), frame_tokens.flatten(),
                                   reduction="none").view_as(frame_tokens).mean(-1)

        def frame_mean(x: Tensor) -> Tensor:
            return (x * w).sum() / denom

        ce = token_ce(logits)
        reward_mse = (aux[..., 0] - symlog(reward)).pow(2)
        success_bce = F.binary_cross_entropy_with_logits(aux[..., 1], success.to(aux.dtype),
                                                         reduction="none")
        state_t = self.normalize_state(state)
        state_mse = (aux[..., 2:] - state_t).pow(2).mean(-1)
        terms = {name: frame_mean(x) for name, x in (
            ("token_ce", ce), ("reward_mse", reward_mse), ("success_bce", success_bce),
            ("state_mse", state_mse))}
        loss = (cfg.w_token * terms["token_ce"] + cfg.w_reward * terms["reward_mse"]
                + cfg.w_success * terms["success_bce"] + cfg.w_state * terms["state_mse"])
        par_logits = None
        if self.head is not None:
            par_logits = self._parallel_logits(ctx_h, h)
            terms["parallel_ce"] = frame_mean(token_ce(par_logits))
            loss = loss + cfg.w_parallel * terms["parallel_ce"]
        with torch.no_grad():
            m = {k: v.item() for k, v in terms.items()}
            m["token_acc"] = frame_mean(
                (logits.argmax(-1) == frame_tokens).float().mean(-1)).item()
            if par_logits is not None:
                m["parallel_acc"] = frame_mean(
                    (par_logits.argmax(-1) == frame_tokens).float().mean(-1)).item()
            m["success_acc"] = frame_mean(((aux[..., 1] > 0) == (success > 0.5)).float()).item()
            m["loss"] = loss.item()
        return loss, m

    # --------------------------------------------------------------------- inference

    def new_cache(self, batch_size: int, kv_dtype: torch.dtype | None = None) -> KVCache:
        """Allocate an empty cache for ``batch_size`` rollouts on the model's device.

        Keys and values are stored in ``kv_dtype`` (default: the weights' dtype); bfloat16
        halves the memory every pass reads, the weights stay as they are.
        """
        cfg, p = self.cfg, self.lm_head.weight
        memory_len = cfg.n_ctx_tokens + cfg.n_frame_tokens if self.head is not None else 0
        return KVCache(cfg.n_layer, batch_size, cfg.kv_heads, cfg.max_seq_len, cfg.head_dim,
                       p.device, p.dtype, n_ctx=cfg.n_ctx_tokens,
                       block=cfg.n_frame_tokens + 1, memory_len=memory_len,
                       memory_dim=cfg.d_model,
                       state_dim=cfg.state_dim if self._tracks_state else 0, kv_dtype=kv_dtype)

    @property
    def _filter_for_grasp(self) -> bool:
        """Whether the filter's state drives the grasp head alone (``filter_drives="grasp"``)."""
        return self.state_filter is not None and self.cfg.filter_drives == "grasp"

    @property
    def _tracks_state(self) -> bool:
        """Whether the cache keeps each rollout's latest state (a filter or a state input)."""
        return self.state_filter is not None or self.state_proj is not None

    def _append(self, x: Tensor, cache: KVCache) -> Tensor:
        """Run ``t`` tokens per row ``x (B, t, d)`` at the cache's next positions, in one pass.

        Returns their final-norm hidden states ``(B, t, d)``.
        """
        t = x.shape[1]
        if cache.end + t - cache.start_min > cache.capacity:
            raise RuntimeError(f"KV cache overflow: {cache.end - cache.start_min} + {t} "
                               f"positions > {cache.capacity}")
        cos, sin = rope_at(cache.slots[:t] + cache.end, self.rope_inv_freq, x.dtype)
        mask = cache.attn_bias(t)
        for i, block in enumerate(self.blocks):
            x = block(x, cos, sin, cache, i, mask)
        cache.end += t
        return self.norm(x)

    def _step(self, x: Tensor, cache: KVCache) -> Tensor:
        """One token per row ``x (B, 1, d)``: its final-norm hidden state ``(B, d)``."""
        return self._append(x, cache)[:, 0]

    @torch.no_grad()
    def prefill(self, cache: KVCache, ctx_tokens: Tensor, index: Tensor | None = None) -> None:
        """Start rollouts from their context tokens ``(B, Nc)``.

        Args:
            cache: From :meth:`new_cache`.
            ctx_tokens: ``(B, Nc)``, or ``(len(index), Nc)`` with ``index``.
            index: Rows to restart (long or bool); the other rows carry on. ``None``: all rows.
        """
        nc = self.cfg.n_ctx_tokens
        if index is not None:  # prefill apart, then place each context right before ``end``
            rows = index.nonzero().squeeze(1) if index.dtype == torch.bool else index
            tmp = KVCache(self.cfg.n_layer, len(rows), self.cfg.kv_heads, nc,
                          cache.k.shape[-1], cache.k.device, cache.ctx_k.dtype, n_ctx=nc,
                          block=1,
                          memory_len=0 if cache.memory is None else cache.memory.shape[1],
                          memory_dim=self.cfg.d_model, kv_dtype=cache.k.dtype)
            self.prefill(tmp, ctx_tokens)
            cache.ctx_k[:, rows], cache.ctx_v[:, rows] = tmp.ctx_k, tmp.ctx_v
            cache.start[rows] = cache.end - nc
            cache.place_context(rows, self.rope_inv_freq)
            if cache.memory is not None:
                cache.memory[rows] = tmp.memory
            cache.n_frames[rows], cache.has_prev[rows], cache.has_state[rows] = 0, False, False
            cache.grasp_run[rows], cache.grasp[rows] = 0, 0
            cache.sync()
            return
        if ctx_tokens.shape != (cache.batch_size, nc):
            raise ValueError(f"ctx_tokens {tuple(ctx_tokens.shape)} do not fit the cache")
        cache.clear()
        cache.capturing = True
        try:
            h = self._append(self.ctx_emb(ctx_tokens), cache)
        finally:
            cache.capturing = False
        if cache.memory is not None:
            cache.memory[:, :nc] = h
        cache.has_prev.zero_()
        cache.has_state.zero_()
        cache.grasp_run.zero_()
        cache.grasp.zero_()

    def set_state(self, cache: KVCache, state: Tensor, index: Tensor | None = None) -> None:
        """Give the state filter and the state input each row's latest real state, real units.

        Rows ``index`` only, if given; a no-op for a model with neither. Without a filter a
        rollout's first imagined state is the plain state head's reading; without a state its
        first slot gets no state input.
        """
        if not self._tracks_state:
            return
        rows = cache.rows if index is None else index
        cache.state[rows] = self.normalize_state(state.to(cache.state))
        cache.filter_state[rows] = cache.state[rows]
        cache.delta[rows] = 0.0
        cache.has_state[rows] = True

    def _make_room(self, cache: KVCache) -> None:
        """Drop the oldest frame of every row whose window is full; keep room for one frame.

        A row drops its oldest frame by moving its context one block forward over it (see
        :mod:`wmgym.model.kv_cache`); the next frame goes into the ring slots it freed.
        """
        full = cache.n_frames >= self.cfg.max_frames
        n_full = int(full.sum())
        if n_full:
            rows = None if n_full == cache.batch_size else full.nonzero().squeeze(1)
            cache.start[full] += cache.block
            cache.n_frames[full] -= 1
            cache.sync()
            cache.place_context(rows, self.rope_inv_freq)

    def _begin_frame(self, cache: KVCache, actions: Tensor) -> Tensor:
        """Make room in full windows; return the slot tokens ``(B, 1, d)`` of the new frame."""
        if cache.end < self.cfg.n_ctx_tokens:
            raise RuntimeError("call prefill(cache, ctx_tokens) before generating frames")
        slides = cache.n_frames >= self.cfg.max_frames  # the window drops a frame: a gap opens
        self._make_room(cache)
        grasp = None
        if self.grasp_head is not None:  # a grasp beginning now draws its bit from the state
            feats = self.grasp_features(cache.filter_state if self._filter_for_grasp
                                        else cache.state).to(self.grasp_emb.dtype)
            p_hold = torch.sigmoid(self.grasp_head(feats).float())
            cache.grasp_run, cache.grasp = advance(cache.grasp_run, cache.grasp, actions,
                                                   p_hold, cache.grasp_u)
            grasp = cache.grasp
        return self._slots(actions, slides, cache.state, cache.has_state, grasp).unsqueeze(1)

    def _end_frame(self, cache: KVCache, hidden: Tensor, actions: Tensor
                   ) -> tuple[Tensor, Tensor, Tensor]:
        """Keep the frame's token hidden states ``(B, n, d)`` for the head; decode the heads."""
        if cache.memory is not None:
            cache.memory[:, self.cfg.n_ctx_tokens :] = hidden
            cache.has_prev.fill_(True)
        cache.n_frames += 1
        h = hidden[:, -1]
        aux = self.aux_head(h)
        cache.last_hidden, cache.last_absolute = h, aux[:, 2:]
        if self.state_filter is not None:
            known = cache.has_state.unsqueeze(1)
            prev = cache.filter_state if self._filter_for_grasp else cache.state
            new = self.state_filter(h, prev, cache.delta, aux[:, 2:], actions).float()
            new = torch.where(known, new, aux[:, 2:].float())
            cache.delta = torch.where(known, new - prev, torch.zeros_like(new))
            cache.has_state.fill_(True)
            if self._filter_for_grasp:  # the filter's chain for the grasp head alone
                cache.filter_state, cache.state = new, aux[:, 2:].float()
            else:
                cache.state = new
                aux = torch.cat([aux[:, :2], new.to(aux.dtype)], -1)
        elif self.state_proj is not None:  # the next slot reads this frame's state
            cache.state = aux[:, 2:].float()
            cache.has_state.fill_(True)
        return self._decode_aux(aux)

    @staticmethod
    def _pick(logits: Tensor, forced: Tensor | None, gumbel: Tensor | None, temperature: float,
              top_k: int | None) -> tuple[Tensor, Tensor]:
        """Tokens from logits ``(..., V)`` (forced, argmax or Gumbel-max) and their entropy."""
        logp = torch.log_softmax(logits.float(), dim=-1)
        entropy = -(logp.exp() * logp).sum(-1)
        if forced is not None:
            return forced, entropy
        if gumbel is None:
            return logits.argmax(-1), entropy
        scores = logits.float() if temperature == 1 else logits.float() / temperature
        if top_k is not None and top_k < scores.shape[-1]:
            kth = scores.topk(top_k, dim=-1).values[..., -1:]
            scores = scores.masked_fill(scores < kth, float("-inf"))
        return (scores + gumbel).argmax(-1), entropy

    def _frame(self, cache: KVCache, actions: Tensor, forced: Tensor | None,
               gumbel: Tensor | None, temperature: float, top_k: int | None,
               logits_out: Tensor | None = None) -> FrameSample:
        """Append one (slot + frame) block: ``n + 1`` single-token forwards over the batch."""
        x = self._begin_frame(cache, actions)
        b, n = actions.shape[0], self.cfg.n_frame_tokens
        tokens = torch.empty(b, n, dtype=torch.long, device=actions.device)
        hidden = torch.empty(b, n, self.cfg.d_model, device=actions.device, dtype=x.dtype)
        entropy = torch.zeros(b, device=actions.device)
        for i in range(n):
            h = self._step(x, cache)
            if i:
                hidden[:, i - 1] = h
            logits = self.lm_head(h)
            if logits_out is not None:
                logits_out[:, i] = logits
            tokens[:, i], ent = self._pick(
                logits, None if forced is None else forced[:, i],
                None if gumbel is None else gumbel[:, i], temperature, top_k)
            entropy += ent
            x = (self.tok_emb(tokens[:, i]) + self.frame_pos[i]).unsqueeze(1)
        hidden[:, n - 1] = self._step(x, cache)
        return FrameSample(tokens, *self._end_frame(cache, hidden, actions), entropy / n)

    def _head_logits(self, slot_h: Tensor, cache: KVCache) -> Tensor:
        """The parallel head's logits ``(B, n, V)`` from the slot's state and the cache memory."""
        nc = self.cfg.n_ctx_tokens
        return self.lm_head(self.head(slot_h, cache.memory[:, :nc], cache.memory[:, nc:],
                                      cache.has_prev))

    def _frame_parallel(self, cache: KVCache, actions: Tensor, forced: Tensor | None,
                        gumbel: Tensor | None, temperature: float, top_k: int | None,
                        logits_out: Tensor | None = None) -> FrameSample:
        """Append one (slot + frame) block in 2 passes: the slot, then the frame's n tokens.

        The tokens are sampled at once from the parallel head's logits.
        """
        slot_h = self._step(self._begin_frame(cache, actions), cache)
        logits = self._head_logits(slot_h, cache)
        if logits_out is not None:
            logits_out.copy_(logits)
        tokens, entropy = self._pick(logits, forced, gumbel, temperature, top_k)
        hidden = self._append(self.tok_emb(tokens) + self.frame_pos, cache)
        return FrameSample(tokens, *self._end_frame(cache, hidden, actions), entropy.mean(-1))

    def _gumbel(self, cache: KVCache, b: int, generators: list[torch.Generator] | None) -> Tensor:
        """Gumbel noise ``(B, n, V)``; sample ``i``'s comes from one draw of ``generators[i]``."""
        shape = (b, self.cfg.n_frame_tokens, self.cfg.vocab_size)
        device = generators[0].device if generators else self.lm_head.weight.device
        if cache.noise is None or cache.noise.shape != shape or cache.noise.device != device:
            cache.noise = torch.empty(shape, device=device)
        if generators is None:
            cache.noise.uniform_()
        else:
            if len(generators) != b:
                raise ValueError(f"need one generator per sample: {len(generators)} != {b}")
            for i, g in enumerate(generators):
                cache.noise[i].uniform_(generator=g)
        u = cache.noise.to(self.lm_head.weight.device)  # in place: 4 fewer (B, n, V) buffers
        return u.clamp_(1e-10, 1.0 - 1e-7).log_().neg_().log_().neg_()

    def resolve_decoding(self, decoding: str = "auto") -> str:
        """``auto`` -> ``parallel`` with the parallel head, else ``autoregressive``.

        Raises:
            ValueError: An unknown mode, or ``parallel`` without the head.
        """
        has_head = self.head is not None
        if decoding == "auto":
            return "parallel" if has_head else "autoregressive"
        if decoding not in ("autoregressive", "parallel"):
            raise ValueError(f"decoding must be 'auto', 'autoregressive' or 'parallel', got "
                             f"{decoding!r}")
        if decoding == "parallel" and not has_head:
            raise ValueError("decoding='parallel' needs a model with the parallel head "
                             "(DynamicsConfig.parallel_head; train dynamics --parallel-head)")
        return decoding

    def _framer(self, decoding: str):
        mode = self.resolve_decoding(decoding)
        return self._frame_parallel if mode == "parallel" else self._frame

    @torch.no_grad()
    def generate_frame(self, cache: KVCache, actions: Tensor,
                       generators: list[torch.Generator] | None = None,
                       temperature: float = 1.0, top_k: int | None = None,
                       decoding: str = "autoregressive") -> FrameSample:
        """Sample the next frame of every rollout in the cache.

        Per-sample reproducible: sample ``i`` draws all its randomness for the frame in one call
        on ``generators[i]`` (Gumbel-max sampling), so its tokens do not depend on the rest of
        the batch. When the window is full the oldest frame is dropped first.

        Args:
            cache: A cache after :meth:`prefill`.
            actions: ``(B, action_dim)``.
            generators: One ``torch.Generator`` per sample, or ``None`` for the global RNG.
            temperature: Softmax temperature; ``0`` takes the argmax.
            top_k: Sample only among the ``top_k`` most likely tokens.
            decoding: ``autoregressive`` (token by token, ``n + 1`` passes), ``parallel`` (the
                parallel head: 2 passes, tokens sampled independently) or ``auto`` (parallel
                when the model has the head).

        Returns:
            :class:`FrameSample` with tokens ``(B, n)``, reward ``(B,)``, success logit ``(B,)``
            and state ``(B, state_dim)``.

        """
        frame = self._framer(decoding)
        gumbel = None if temperature == 0 else self._gumbel(cache, actions.shape[0], generators)
        if self.grasp_head is not None:
            self._grasp_draws(cache, generators, greedy=temperature == 0)
        return frame(cache, actions, None, gumbel, temperature, top_k)

    @staticmethod
    def _grasp_draws(cache: KVCache, generators: list[torch.Generator] | None,
                     greedy: bool) -> None:
        """Each rollout's uniform draw for a grasp that may begin this frame.

        One more draw from ``generators[i]`` after the frame's Gumbel noise (models without the
        grasp latent draw nothing more); ``greedy``: 0.5, the likelier outcome.
        """
        if greedy:
            cache.grasp_u.fill_(0.5)
        elif generators is None:
            cache.grasp_u.uniform_()
        else:
            draws = [torch.rand(1, generator=g, device=g.device) for g in generators]
            cache.grasp_u.copy_(torch.cat(draws).to(cache.grasp_u.device))

    @torch.no_grad()
    def teacher_force_frame(self, cache: KVCache, actions: Tensor, frame_tokens: Tensor,
                            decoding: str = "autoregressive") -> tuple[Tensor, FrameSample]:
        """Append a known frame ``(B, n)`` through the cache.

        Token by token, or with ``decoding="parallel"`` in 2 passes.

        Returns:
            ``(logits (B, n, V), FrameSample)``: the logits the model gave each token (the
            autoregressive or the parallel head's) and the heads' predictions for the frame.

        """
        frame = self._framer(decoding)
        b, n = frame_tokens.shape
        if self.grasp_head is not None:
            self._grasp_draws(cache, None, greedy=True)
        logits = torch.empty(b, n, self.cfg.vocab_size, device=frame_tokens.device,
                             dtype=self.lm_head.weight.dtype)
        return logits, frame(cache, actions, frame_tokens, None, 1.0, None, logits)
