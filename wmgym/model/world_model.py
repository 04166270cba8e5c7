"""WorldModel: tokenizer + dynamics transformer behind ``reset`` / ``step`` on batched tensors.

No gym and no numpy in here: frames are ``(B, 5, H, W)`` float tensors (see ``frames.py``),
actions ``(B, action_dim)``. The KV-cache life cycle is explicit::

    state = wm.reset(frames)                     # tokenize the context, prefill the cache
    out, state = wm.step(state, actions)         # sample one frame for every rollout
    state = wm.reset(new_frames, state=state, index=done)   # restart some rollouts only
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from pathlib import Path
from typing import NamedTuple

import torch
from torch import Tensor, nn

from wmgym.model import checkpoint as ckpt
from wmgym.model.fast_decoder import FAST_DECODER
from wmgym.model.fast_dynamics import FAST_DYNAMICS, load_fast_dynamics
from wmgym.model.state_model import StateModel, has_state_model, load_state_model
from wmgym.model.tokenizer import (
    ContextCode,
    Decoder,
    MMTokenizer,
    TokenizerConfig,
    config_from_dict,
)
from wmgym.model.transformer import (
    DynamicsConfig,
    DynamicsTransformer,
    KVCache,
    dynamics_config_from_dict,
)

#: Activation values per chunk of frames decoded at once on CPU: 32 frames of the full
#: decoder's 16 x 64 x 64 maps (8 MB). A whole batch-256 step's maps (67 MB each) leave the
#: caches; 32 frames at a time decode 1.4-1.7x faster per frame on a 2-core CPU than the whole
#: batch (16 and 64 were no better). The fast decoder's largest maps are 4x smaller, so it
#: takes 128 frames at a time. A GPU wants the whole batch.
CPU_DECODE_VALUES = 32 * 16 * 64 * 64


def cpu_decode_chunk(decoder: Decoder) -> int:
    """Frames ``decoder`` decodes at once on CPU (:data:`CPU_DECODE_VALUES`)."""
    return max(1, CPU_DECODE_VALUES // decoder.map_size)

@dataclass
class RolloutState:
    """Everything a batch of imagined rollouts carries between steps."""

    cache: KVCache
    """Per-layer keys/values of the context and the recent frames (sliding window)."""
    ctx: ContextCode
    """Context tokens and the encoder features every decoded frame cross-attends to."""
    generators: list[torch.Generator] | None
    """One generator per rollout (reproducible sampling), or None for the global RNG."""
    steps: Tensor
    """``(B,)`` steps taken since each rollout's reset."""
    track: StateTrack | None = None
    """What the state model carries (with a state model)."""


@dataclass
class StateTrack:
    """The state model's memory of every rollout: its latest state and last displacements."""

    state: Tensor
    """``(B, state_dim)`` the latest state, real units."""
    past: Tensor
    """``(B, history, n_fields)`` the last displacements of its fields, oldest first."""
    known: Tensor
    """``(B,)`` bool: the rollout started from a known state (else the transformer's reading
    is kept until it has one)."""


class StepOutput(NamedTuple):
    """What one imagined step returns, batched."""

    frames: Tensor | None  # (B, 5, H, W) decoded frame (rgb, depth, mask prob); None if not decoded
    reward: Tensor  # (B,)
    success: Tensor  # (B,) probability that the task is solved
    state: Tensor  # (B, state_dim) predicted privileged state
    tokens: Tensor  # (B, n) the sampled frame tokens
    uncertainty: Tensor  # (B,) mean entropy (nats) of the token distributions sampled from
    event_doubt: Tensor  # (B,) chance that an event beginning now ends otherwise in reality


def resolve_device(device: str | torch.device = "auto") -> torch.device:
    """``"auto"`` -> CUDA when present, else CPU."""
    if str(device) == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(device)


class WorldModel(nn.Module):
    """The learned simulator's engine.

    Args:
        tokenizer: Tokenizer config.
        dynamics: Dynamics transformer config.
        depth_range: Near/far depth in metres that normalized depth maps to.
    """

    def __init__(
        self, tokenizer: TokenizerConfig, dynamics: DynamicsConfig,
        depth_range: tuple[float, float],
    ):
        super().__init__()
        self.tokenizer = MMTokenizer(tokenizer)
        self.dynamics = DynamicsTransformer(dynamics)
        self.depth_range = tuple(depth_range)
        self.state_model: StateModel | None = None  # see with_state_model

    def with_state_model(self, model: StateModel | None) -> WorldModel:
        """Imagine the state with ``model`` (:mod:`wmgym.model.state_model`); returns ``self``.

        None: the transformer's reading of the state.
        """
        # a plain attribute, not a submodule: the state model lives in its own files
        object.__setattr__(self, "state_model",
                           None if model is None else model.to(self.device).eval())
        return self

    # ------------------------------------------------------------------ persistence
    def config(self) -> dict:
        """JSON-serialisable configs: what ``load`` needs to rebuild the model."""
        return {
            "tokenizer": asdict(self.tokenizer.cfg),
            "dynamics": asdict(self.dynamics.cfg),
            "depth_range": list(self.depth_range),
        }

    def save(self, directory: str | Path, extra: dict | None = None, start_obs=None) -> Path:
        """Saves a verified checkpoint directory (see ``checkpoint.py``).

        A fast decoder or fast transformer in ``directory`` distilled from the weights this
        replaces is removed: it reproduces the old model (``wmgym train decoder`` and ``wmgym
        train fast-dynamics`` make new ones).
        """
        out = ckpt.save_checkpoint(
            directory, self.state_dict(), {**self.config(), **(extra or {})}, start_obs
        )
        for companion in (FAST_DECODER, FAST_DYNAMICS):
            companion.remove_if_stale(out)
        return out

    def with_dynamics(self, dynamics: DynamicsTransformer) -> WorldModel:
        """A world model that shares this one's tokenizer and imagines with ``dynamics``.

        ``dynamics`` must read and write this tokenizer's tokens (a fast transformer
        distilled from this model's).
        """
        model = WorldModel.__new__(WorldModel)
        nn.Module.__init__(model)
        model.tokenizer, model.dynamics, model.depth_range = self.tokenizer, dynamics, \
            self.depth_range
        return model.with_state_model(self.state_model)

    @classmethod
    def from_config(cls, config: dict) -> WorldModel:
        """Builds an untrained model from a ``config()`` dict."""
        return cls(config_from_dict(config["tokenizer"]),
                   dynamics_config_from_dict(config["dynamics"]), tuple(config["depth_range"]))

    @classmethod
    def load(cls, directory: str | Path, device: str | torch.device = "cpu", *,
             dynamics: str = "full", state_model: bool = True) -> WorldModel:
        """Loads a checkpoint directory, verifying hash, keys, shapes and finiteness.

        Args:
            directory: The checkpoint directory.
            device: ``"auto"`` (CUDA when present), ``"cpu"``, ``"cuda"``, ….
            dynamics: ``"full"`` (the checkpoint's transformer) or ``"fast"`` (its distilled
                one, :mod:`wmgym.model.fast_dynamics`, with the same tokenizer).
            state_model: Use the checkpoint's state model when it has one
                (:mod:`wmgym.model.state_model`).

        Raises:
            CheckpointError: A file is missing, corrupt or does not fit; the message names it.
            ValueError: An unknown ``dynamics``.
        """
        if dynamics not in ("full", "fast"):
            raise ValueError(f"dynamics must be 'full' or 'fast', got {dynamics!r}")
        config = ckpt.read_config(directory)
        try:
            model = cls.from_config(config)
        except (KeyError, TypeError, ValueError) as e:
            raise ckpt.CheckpointError(
                f"{Path(directory) / ckpt.CONFIG}: model config does not fit this version of "
                f"wmgym ({e})"
            ) from e
        tensors = ckpt.load_weights(directory, config)
        ckpt.load_state_dict_strict(model, tensors, Path(directory) / ckpt.WEIGHTS)
        model = model.to(resolve_device(device)).eval()
        if dynamics == "fast":
            model = model.with_dynamics(load_fast_dynamics(directory, model.device))
        if state_model and has_state_model(directory):
            model.with_state_model(load_state_model(directory, model.device))
        return model

    @property
    def device(self) -> torch.device:
        return self.dynamics.slot.device

    # ------------------------------------------------------------------ rollouts
    @torch.no_grad()
    def reset(
        self,
        frames: Tensor,
        *,
        generators: list[torch.Generator] | None = None,
        history: tuple[Tensor, Tensor] | None = None,
        state: RolloutState | None = None,
        index: Tensor | None = None,
        states: Tensor | None = None,
        kv_dtype: torch.dtype | None = None,
    ) -> RolloutState:
        """Starts rollouts from real context frames.

        Args:
            frames: ``(B, 5, H, W)`` context frames (``(len(index), …)`` with ``index``).
            generators: One generator per rollout for reproducible sampling.
            history: Optional ``(frames (B, K, 5, H, W), actions (B, K, A))``: the K frames that
                followed the context and the actions that led to each, teacher-forced through
                the cache so imagination continues from the latest one.
            state: With ``index``, an existing state whose rollouts ``index`` restart while
                the others carry on.
            index: ``(k,)`` long tensor of the rollouts to restart.
            states: ``(B, state_dim)`` (``(len(index), …)`` with ``index``): the privileged
                state of each rollout's latest real frame (the context's, or the last history
                frame's). A model with the state input reads it on its first slot; without
                it the first slot goes without.
            kv_dtype: dtype of a new cache's keys and values (default: the weights'); with
                ``state`` the existing cache keeps its own.

        Returns:
            The rollout state.
        """
        frames = frames.to(self.device)
        ctx = self.tokenizer.encode_context(frames)
        if state is None:
            cache = self.dynamics.new_cache(frames.shape[0], kv_dtype)
            self.dynamics.prefill(cache, ctx.tokens)
            steps = torch.zeros(frames.shape[0], dtype=torch.long, device=self.device)
            state = RolloutState(cache, ctx, generators, steps)
            rows = None
        else:
            if index is None:
                raise ValueError("reset(state=...) needs index=: the rollouts to restart")
            rows = index.to(self.device)
            self.dynamics.prefill(state.cache, ctx.tokens, index=rows)
            state.ctx.tokens[rows] = ctx.tokens
            for old, new in zip(state.ctx.feats, ctx.feats):
                old[rows] = new
            state.steps[rows] = 0
            if generators is not None and state.generators is not None:
                for i, g in zip(index.tolist(), generators):
                    state.generators[i] = g
        if history is not None:
            if rows is not None:
                raise ValueError("history is only supported when resetting every rollout")
            hist_frames, hist_actions = (t.to(self.device) for t in history)
            tokens = self.tokenizer.encode_future(hist_frames, ctx.feats)
            for k in range(tokens.shape[1]):
                self.dynamics.teacher_force_frame(state.cache, hist_actions[:, k], tokens[:, k])
        if states is not None:
            self.dynamics.set_state(state.cache, states.to(self.device), rows)
        if self.state_model is not None:
            self._reset_track(state, states, rows)
        return state

    def _reset_track(self, state: RolloutState, states: Tensor | None, rows: Tensor | None
                     ) -> None:
        """Start the state model's memory of rollouts ``rows`` (all: None) at ``states``.

        The rollouts start at rest (no past displacement).
        """
        cfg, n = self.state_model.cfg, state.steps.shape[0]
        if state.track is None:
            z = torch.zeros
            state.track = StateTrack(z(n, cfg.state_dim, device=self.device),
                                     z(n, cfg.history, len(cfg.fields), device=self.device),
                                     z(n, dtype=torch.bool, device=self.device))
        at = slice(None) if rows is None else rows
        state.track.past[at] = 0.0
        state.track.known[at] = states is not None
        if states is not None:
            state.track.state[at] = states.to(self.device, torch.float32)

    def _step_track(self, state: RolloutState, actions: Tensor, predicted: Tensor) -> Tensor:
        """The transformer's predicted state with the state model's fields in it.

        The result is what the next slot and the event head read. A rollout started without
        a known state keeps the transformer's reading for this step.
        """
        track, idx = state.track, self.state_model.index
        event = state.cache.event if self.dynamics.event_head is not None else None
        fields, past = self.state_model.step(track.state, track.past, actions, event)
        known = track.known.unsqueeze(-1)
        out = predicted.float().clone()
        out[:, idx] = torch.where(known, fields, out[:, idx])
        read = (out[:, idx] - track.state[:, idx]).unsqueeze(1)
        track.past = torch.where(known.unsqueeze(-1), past,
                                 torch.cat([track.past[:, 1:], read], 1))
        track.state, track.known = out, torch.ones_like(track.known)
        self.dynamics.set_state(state.cache, out)
        return out

    @torch.no_grad()
    def decode(self, tokens: Tensor, state: RolloutState, index: Tensor | None = None, *,
               decoder: Decoder | None = None) -> Tensor:
        """Frame tokens ``(B, n)`` of rollouts ``index`` (default all) -> ``(B, 5, H, W)``.

        ``decoder``: a distilled frame decoder (:mod:`wmgym.model.fast_decoder`) instead of the
        tokenizer's own.
        """
        feats = state.ctx.feats if index is None else [f[index] for f in state.ctx.feats]
        n = tokens.shape[0]
        chunk = cpu_decode_chunk(decoder or self.tokenizer.fut_decoder)
        if self.device.type != "cpu" or n <= chunk:
            return self.tokenizer.decode_future(tokens, feats, decoder)
        return torch.cat([
            self.tokenizer.decode_future(tokens[i : i + chunk], [f[i : i + chunk] for f in feats],
                                         decoder)
            for i in range(0, n, chunk)
        ])

    @torch.no_grad()
    def step(
        self, state: RolloutState, actions: Tensor, *, temperature: float = 1.0,
        decode: bool = True, decoder: Decoder | None = None,
    ) -> tuple[StepOutput, RolloutState]:
        """Imagines one step of every rollout.

        Args:
            state: From ``reset`` or a previous ``step``.
            actions: ``(B, action_dim)``, already validated and clipped.
            temperature: Token sampling temperature (0 = greedy).
            decode: Decode the frame tokens to images (False: only tokens and heads, faster;
                imagination continues from the tokens either way).
            decoder: A distilled frame decoder to decode with instead of the tokenizer's own.

        Returns:
            ``(StepOutput, state)``; the state is updated in place and returned for clarity.
        """
        actions = actions.to(self.device, torch.float32)
        sample = self.dynamics.generate_frame(state.cache, actions, generators=state.generators,
                                              temperature=temperature)
        predicted = sample.state
        if self.state_model is not None and state.track is not None:
            predicted = self._step_track(state, actions, predicted).to(sample.state.dtype)
        frames = self.decode(sample.tokens, state, decoder=decoder) if decode else None
        state.steps += 1
        out = StepOutput(
            frames=frames,
            reward=sample.reward.clamp(0.0, 1.0),
            success=torch.sigmoid(sample.success_logit),
            state=predicted,
            tokens=sample.tokens,
            uncertainty=sample.entropy,
            event_doubt=state.cache.event_doubt.clone(),
        )
        return out, state
