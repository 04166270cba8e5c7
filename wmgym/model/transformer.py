"""DynamicsTransformer: a LLaMA-style decoder-only transformer over tokenized trajectories.

One sample is the sequence::

    [ctx tokens (Nc)] [S+a_1] [f_1 (n)] [S+a_2] [f_2 (n)] ... [S+a_T] [f_T (n)]

``S`` is a learned slot embedding; action ``a_t`` enters through a zero-initialised linear map
added to it, and so do (optionally) a gap flag, the previous frame's state and an event latent.
The slot predicts ``f_t[0]`` and ``f_t[i]`` predicts ``f_t[i+1]``. Heads on the last token of
``f_t`` predict reward (symlog space), success (logit) and the state vector reached after
``a_t``.

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

from wmgym.model.blocks import Block, RMSNorm
from wmgym.model.checkpoint import check_fields
from wmgym.model.event_latent import EventConfig, EventHead, advance, begins
from wmgym.model.kv_cache import KVCache, apply_rope, rope_at, rope_inv_freq, rope_tables

__all__ = ["DynamicsConfig", "DynamicsOutput", "DynamicsTransformer", "FrameSample", "KVCache",
           "apply_rope", "dynamics_config_from_dict", "rope_at", "rope_tables", "symexp",
           "symlog"]


@dataclass
class DynamicsConfig:
    """Hyper-parameters of :class:`DynamicsTransformer`."""

    action_dim: int  # action size (the task's)
    state_dim: int  # privileged state size (the task's)
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
    # The previous frame's state on each slot, through a zero-initialised linear map like the
    # action: the real state in training, in imagination the latest real state given and then
    # the model's own readings. Frames then follow the state to the millimetre instead of
    # recovering it from a few coarse tokens.
    state_input: bool = False
    # With state_input: an event whose outcome is drawn once when it begins, as a dict of
    # wmgym.model.event_latent.EventConfig's keys (a task spec's EventConfig.as_config()).
    event: dict | None = None
    state_noise: float = 0.1  # std of the noise on the training state input (normalised units)
    state_dropout: float = 0.1  # share of training clips given no state input (as in a restart)

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


def dynamics_config_from_dict(config: dict) -> DynamicsConfig:
    """A :class:`DynamicsConfig` from its ``asdict`` form (a checkpoint's ``dynamics``).

    Raises:
        ValueError: Missing or unknown keys, naming them and the expected ones.
    """
    check_fields(DynamicsConfig, config, "dynamics config")
    return DynamicsConfig(**config)


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


# ----------------------------------------------------------------------------- model


class DynamicsTransformer(nn.Module):
    """Autoregressive dynamics over future-frame tokens, conditioned on context and actions.

    Args:
        cfg: Model config.

    Raises:
        ValueError: Heads that do not divide, or an event without the state input.
    """

    def __init__(self, cfg: DynamicsConfig) -> None:
        super().__init__()
        if cfg.d_model % cfg.n_head or cfg.head_dim % 2:
            raise ValueError(f"d_model={cfg.d_model} must split into n_head={cfg.n_head} heads "
                             "of an even width")
        if not 0 < cfg.kv_heads <= cfg.n_head or cfg.n_head % cfg.kv_heads:
            raise ValueError(f"n_kv_head={cfg.n_kv_head} must divide n_head={cfg.n_head}")
        if cfg.event is not None and not cfg.state_input:
            raise ValueError("event needs state_input: its head reads the state")
        self.cfg = cfg
        d, n = cfg.d_model, cfg.n_frame_tokens
        self.ctx_emb = nn.Embedding(cfg.ctx_vocab_size, d)
        self.tok_emb = nn.Embedding(cfg.vocab_size, d)
        self.frame_pos = nn.Parameter(torch.zeros(n, d))  # index of a token within its frame
        self.slot = nn.Parameter(torch.zeros(d))
        self.action_proj = nn.Linear(cfg.action_dim, d)
        self.gap_emb = nn.Parameter(torch.zeros(d)) if cfg.gap_embedding else None
        self.blocks = nn.ModuleList(Block(cfg) for _ in range(cfg.n_layer))
        self.norm = RMSNorm(d, cfg.norm_eps)
        self.lm_head = nn.Linear(d, cfg.vocab_size, bias=False)
        self.aux_head = nn.Linear(d, 2 + cfg.state_dim)  # [reward (symlog), success, state...]
        self.state_proj = nn.Linear(cfg.state_dim, d) if cfg.state_input else None
        # success, failure; zero at first like the other slot inputs ("no effect")
        event = None if cfg.event is None else EventConfig.from_dict(cfg.event)
        self.event_emb = nn.Parameter(torch.zeros(2, d)) if event else None
        self.event_head = EventHead(event) if event else None
        self.register_buffer("state_mean", torch.zeros(cfg.state_dim))
        self.register_buffer("state_std", torch.ones(cfg.state_dim))
        cos, sin = rope_tables(cfg.max_seq_len, cfg.head_dim, cfg.rope_theta)
        self.register_buffer("rope_cos", cos, persistent=False)
        self.register_buffer("rope_sin", sin, persistent=False)
        self.register_buffer("rope_inv_freq", rope_inv_freq(cfg.head_dim, cfg.rope_theta),
                             persistent=False)
        self.apply(self._init_weights)
        for name, p in self.named_parameters():
            if name.endswith(("attn.proj.weight", "mlp.down.weight")):  # residual outputs
                nn.init.normal_(p, std=0.02 / math.sqrt(2 * cfg.n_layer))
        nn.init.normal_(self.frame_pos, std=0.02)
        nn.init.normal_(self.slot, std=0.02)
        if self.gap_emb is not None:  # as large as the slot from the start: it must be visible
            nn.init.normal_(self.gap_emb, std=0.02)
        for proj in (self.action_proj, self.state_proj):  # "no effect" at first
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

    def event_logit(self, state: Tensor) -> Tensor:
        """The logit ``(...)`` that an event beginning at normalised ``state`` succeeds."""
        feats = self.event_head.features(state, self.state_mean, self.state_std)
        return self.event_head(feats.to(self.event_emb.dtype))

    def _decode_aux(self, aux: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        reward = symexp(aux[..., 0])
        return reward, aux[..., 1], aux[..., 2:] * self.state_std + self.state_mean

    def _slots(self, actions: Tensor, gap: Tensor | None, state: Tensor | None = None,
               known: Tensor | None = None, event: Tensor | None = None) -> Tensor:
        """Slot tokens ``(..., d)``: the slot plus the action, gap flag, state and event.

        ``gap`` and ``known`` are per sample ``(B,)``; ``state`` is the previous frame's
        normalised state, added where ``known``; ``event`` (long, shaped like ``actions``
        without its last axis) is each slot's event latent.
        """
        x = self.slot + self.action_proj(actions.to(self.slot.dtype))

        def per_sample(flag: Tensor) -> Tensor:  # (B,) -> broadcastable over (B, ..., d)
            return flag.to(x.dtype).view(-1, *([1] * (x.dim() - 1)))

        if gap is not None and self.gap_emb is not None:
            x = x + per_sample(gap) * self.gap_emb
        if self.state_proj is not None and state is not None:
            s = self.state_proj(state.to(x.dtype))
            x = x + (s if known is None else per_sample(known) * s)
        if self.event_emb is not None and event is not None:
            x = x + torch.cat([self.event_emb.new_zeros(1, x.shape[-1]), self.event_emb]
                              ).to(x.dtype)[event]
        return x

    # --------------------------------------------------------------------- training

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

    def raw_outputs(self, ctx_tokens: Tensor, frame_tokens: Tensor, actions: Tensor, *,
                    gap: Tensor | None = None, prev_state: Tensor | None = None,
                    event: Tensor | None = None) -> tuple[Tensor, Tensor]:
        """:meth:`forward`'s logits ``(B, T, n, V)`` and raw heads ``(B, T, 2 + state_dim)``."""
        b, t, n = frame_tokens.shape
        if t > self.cfg.max_frames:
            raise ValueError(f"{t} frames exceed the window of max_frames={self.cfg.max_frames}")
        slots = self._slots(actions, gap, *self._state_input(prev_state, b), event).unsqueeze(2)
        frames = self.tok_emb(frame_tokens) + self.frame_pos  # (B, T, n, d)
        x = torch.cat([self.ctx_emb(ctx_tokens), torch.cat([slots, frames], 2).flatten(1, 2)], 1)
        cos, sin = self.rope_cos[: x.shape[1]], self.rope_sin[: x.shape[1]]
        for block in self.blocks:
            x = block(x, cos, sin)
        h = self.norm(x)[:, ctx_tokens.shape[1]:].view(b, t, n + 1, -1)
        return self.lm_head(h[:, :, :n]), self.aux_head(h[:, :, n])

    def forward(self, ctx_tokens: Tensor, frame_tokens: Tensor, actions: Tensor, *,
                gap: Tensor | None = None, prev_state: Tensor | None = None,
                event: Tensor | None = None) -> DynamicsOutput:
        """Teacher-forced forward.

        Args:
            ctx_tokens: ``(B, Nc)`` context tokens.
            frame_tokens: ``(B, T, n)`` future tokens, ``T <= max_frames``.
            actions: ``(B, T, action_dim)``; ``actions[:, t]`` leads to ``frame_tokens[:, t]``.
            gap: ``(B,)``: 1 where the first frame does not follow the context directly.
            prev_state: ``(B, T, state_dim)`` raw state before frame ``t`` (``state_input``).
            event: ``(B, T)`` long event latent on frame ``t``'s slot (``event``; none when
                ``None``).

        Returns:
            :class:`DynamicsOutput`.
        """
        logits, aux = self.raw_outputs(ctx_tokens, frame_tokens, actions, gap=gap,
                                       prev_state=prev_state, event=event)
        return DynamicsOutput(logits, *self._decode_aux(aux))

    def loss(self, ctx_tokens: Tensor, frame_tokens: Tensor, actions: Tensor, reward: Tensor,
             success: Tensor, state: Tensor, *, valid: Tensor | None = None,
             gap: Tensor | None = None, prev_state: Tensor | None = None,
             event: Tensor | None = None) -> tuple[Tensor, dict[str, float]]:
        """Token cross-entropy + reward symlog MSE + success BCE + normalised state MSE.

        Args:
            ctx_tokens: As :meth:`forward`.
            frame_tokens: As :meth:`forward`.
            actions: As :meth:`forward`.
            reward: ``(B, T)`` reward received for reaching frame ``t``.
            success: ``(B, T)`` success flag of frame ``t`` (bool or float).
            state: ``(B, T, state_dim)`` raw state of frame ``t``.
            valid: Optional ``(B, T)`` mask of real (non-padding) frames.
            gap: As :meth:`forward`.
            prev_state: As :meth:`forward`.
            event: As :meth:`forward`.

        Returns:
            ``(scalar loss, metrics)``.
        """
        cfg = self.cfg
        logits, aux = self.raw_outputs(ctx_tokens, frame_tokens, actions, gap=gap,
                                       prev_state=prev_state, event=event)
        w = torch.ones_like(reward) if valid is None else valid.to(reward.dtype)
        denom = w.sum().clamp_min(1.0)

        def frame_mean(x: Tensor) -> Tensor:
            return (x * w).sum() / denom

        ce = F.cross_entropy(logits.flatten(0, 2).float(), frame_tokens.flatten(),
                             reduction="none").view_as(frame_tokens).mean(-1)
        reward_mse = (aux[..., 0] - symlog(reward)).pow(2)
        success_bce = F.binary_cross_entropy_with_logits(aux[..., 1], success.to(aux.dtype),
                                                         reduction="none")
        state_mse = (aux[..., 2:] - self.normalize_state(state)).pow(2).mean(-1)
        terms = {name: frame_mean(x) for name, x in (
            ("token_ce", ce), ("reward_mse", reward_mse), ("success_bce", success_bce),
            ("state_mse", state_mse))}
        loss = (cfg.w_token * terms["token_ce"] + cfg.w_reward * terms["reward_mse"]
                + cfg.w_success * terms["success_bce"] + cfg.w_state * terms["state_mse"])
        with torch.no_grad():
            m = {k: v.item() for k, v in terms.items()}
            m["token_acc"] = frame_mean(
                (logits.argmax(-1) == frame_tokens).float().mean(-1)).item()
            m["success_acc"] = frame_mean(((aux[..., 1] > 0) == (success > 0.5)).float()).item()
            m["loss"] = loss.item()
        return loss, m

    # --------------------------------------------------------------------- inference

    def new_cache(self, batch_size: int, kv_dtype: torch.dtype | None = None) -> KVCache:
        """An empty cache for ``batch_size`` rollouts; ``kv_dtype`` default: the weights'."""
        cfg, p = self.cfg, self.lm_head.weight
        return KVCache(cfg.n_layer, batch_size, cfg.kv_heads, cfg.max_seq_len, cfg.head_dim,
                       p.device, p.dtype, n_ctx=cfg.n_ctx_tokens, block=cfg.n_frame_tokens + 1,
                       state_dim=cfg.state_dim if cfg.state_input else 0, kv_dtype=kv_dtype)

    def _append(self, x: Tensor, cache: KVCache) -> Tensor:
        """Final-norm hidden states of ``x (B, t, d)`` run at the cache's next positions."""
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
            tmp = KVCache(self.cfg.n_layer, len(rows), self.cfg.kv_heads, nc, cache.k.shape[-1],
                          cache.k.device, cache.ctx_k.dtype, n_ctx=nc, block=1,
                          kv_dtype=cache.k.dtype)
            self.prefill(tmp, ctx_tokens)
            cache.restart(rows, tmp, self.rope_inv_freq)
            return
        if ctx_tokens.shape != (cache.batch_size, nc):
            raise ValueError(f"ctx_tokens {tuple(ctx_tokens.shape)} do not fit the cache")
        cache.clear()
        cache.capturing = True
        try:
            self._append(self.ctx_emb(ctx_tokens), cache)
        finally:
            cache.capturing = False
        cache.forget()

    def set_state(self, cache: KVCache, state: Tensor, index: Tensor | None = None) -> None:
        """Give the state input each row's (or rows ``index``') latest real state, real units.

        A no-op without the state input; a row given none gets no state on its first slot.
        """
        if self.state_proj is None:
            return
        rows = cache.rows if index is None else index
        cache.state[rows] = self.normalize_state(state.to(cache.state))
        cache.has_state[rows] = True

    def _begin_frame(self, cache: KVCache, actions: Tensor) -> Tensor:
        """Make room in a full window; return the slot tokens ``(B, 1, d)`` of the new frame.

        A row whose window is full drops its oldest frame by moving its context one block
        forward over it (see :mod:`wmgym.model.kv_cache`); the new frame then carries the gap
        flag. An event beginning now draws its outcome from the latest state.
        """
        if cache.end < self.cfg.n_ctx_tokens:
            raise RuntimeError("call prefill(cache, ctx_tokens) before generating frames")
        full = cache.n_frames >= self.cfg.max_frames
        cache.drop_oldest(full, self.rope_inv_freq)
        event = None
        if self.event_head is not None:
            p = torch.sigmoid(self.event_logit(cache.state).float())
            cache.event_run, cache.event = advance(cache.event_run, cache.event, actions, p,
                                                   cache.event_u, self.event_head.cfg)
            cache.event_doubt = torch.where(begins(cache.event_run, self.event_head.cfg),
                                            2 * p * (1 - p), torch.zeros_like(p))
            event = cache.event
        return self._slots(actions, full, cache.state, cache.has_state, event).unsqueeze(1)

    @staticmethod
    def _pick(logits: Tensor, forced: Tensor | None, gumbel: Tensor | None,
              temperature: float) -> tuple[Tensor, Tensor]:
        """Tokens from logits ``(..., V)`` (forced, argmax or Gumbel-max) and their entropy."""
        logp = torch.log_softmax(logits.float(), dim=-1)
        entropy = -(logp.exp() * logp).sum(-1)
        if forced is not None:
            return forced, entropy
        if gumbel is None:
            return logits.argmax(-1), entropy
        scores = logits.float() if temperature == 1 else logits.float() / temperature
        return (scores + gumbel).argmax(-1), entropy

    def _frame(self, cache: KVCache, actions: Tensor, forced: Tensor | None,
               gumbel: Tensor | None, temperature: float,
               logits_out: Tensor | None = None) -> FrameSample:
        """Append one (slot + frame) block: ``n + 1`` single-token passes over the batch."""
        x = self._begin_frame(cache, actions)
        b, n = actions.shape[0], self.cfg.n_frame_tokens
        tokens = torch.empty(b, n, dtype=torch.long, device=actions.device)
        entropy = torch.zeros(b, device=actions.device)
        for i in range(n):
            logits = self.lm_head(self._append(x, cache)[:, 0])
            if logits_out is not None:
                logits_out[:, i] = logits
            tokens[:, i], ent = self._pick(logits, None if forced is None else forced[:, i],
                                           None if gumbel is None else gumbel[:, i], temperature)
            entropy += ent
            x = (self.tok_emb(tokens[:, i]) + self.frame_pos[i]).unsqueeze(1)
        aux = self.aux_head(self._append(x, cache)[:, 0])
        cache.n_frames += 1
        if self.state_proj is not None:  # the next slot reads this frame's state
            cache.state = aux[:, 2:].float()
            cache.has_state.fill_(True)
        return FrameSample(tokens, *self._decode_aux(aux), entropy / n)

    @torch.no_grad()
    def generate_frame(self, cache: KVCache, actions: Tensor, *,
                       generators: list[torch.Generator] | None = None,
                       temperature: float = 1.0) -> FrameSample:
        """Sample the next frame of every rollout in the cache.

        Per-sample reproducible: sample ``i`` draws all its randomness for the frame from
        ``generators[i]`` (Gumbel-max sampling), so its tokens do not depend on the rest of
        the batch. When the window is full the oldest frame is dropped first.

        Args:
            cache: A cache after :meth:`prefill`.
            actions: ``(B, action_dim)``.
            generators: One ``torch.Generator`` per sample, or ``None`` for the global RNG.
            temperature: Softmax temperature; ``0`` takes the argmax (and the likelier
                outcome of an event).

        Returns:
            :class:`FrameSample` with tokens ``(B, n)``, reward ``(B,)``, success logit
            ``(B,)``, state ``(B, state_dim)`` and entropy ``(B,)``.
        """
        if temperature == 0:
            cache.event_u.fill_(0.5)
            return self._frame(cache, actions, None, None, temperature)
        shape = (actions.shape[0], self.cfg.n_frame_tokens, self.cfg.vocab_size)
        gumbel = cache.draw(generators, shape, self.lm_head.weight.device,
                            event=self.event_head is not None)
        return self._frame(cache, actions, None, gumbel, temperature)

    @torch.no_grad()
    def teacher_force_frame(self, cache: KVCache, actions: Tensor, frame_tokens: Tensor
                            ) -> tuple[Tensor, FrameSample]:
        """Append a known frame ``(B, n)`` through the cache, token by token.

        An event beginning at it takes the likelier outcome.

        Returns:
            ``(logits (B, n, V), FrameSample)``: the logits the model gave each token and the
            heads' predictions for the frame.
        """
        b, n = frame_tokens.shape
        cache.event_u.fill_(0.5)
        logits = torch.empty(b, n, self.cfg.vocab_size, device=frame_tokens.device,
                             dtype=self.lm_head.weight.dtype)
        return logits, self._frame(cache, actions, frame_tokens, None, 1.0, logits)
