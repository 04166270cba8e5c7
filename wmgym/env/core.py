"""The batched imagination core shared by ``WorldModelEnv`` and ``WorldModelVectorEnv``.

Both envs are thin Gymnasium shells around one :class:`Imagination` (a single env is a batch of
one), so a sub-env of the vector env and a single env seeded alike follow the same code path
and sample the same tokens: bit for bit at equal batch size; across batch sizes the decoded
images, state and reward may differ in the last float32 bits (batched kernels sum in another
order), which moves an rgb value by at most 1 where it rounds.

The core owns the model's rollout state (its KV cache) and one ``torch.Generator`` per rollout;
it speaks numpy observations and actions outside and batched tensors to the
:class:`~wmgym.model.world_model.WorldModel` inside. Episode bookkeeping (seeding, time limits,
autoreset) is the envs' job.

The life cycle, for ``N`` rollouts::

    start = core.draw_start(np_random, context)    # per rollout: a real observation and a seed
    obs = core.reset([start_0, ..., start_N-1])    # tokenize and prefill every rollout
    out = core.step(actions)                       # (N, action_dim) -> one step of all N
    obs = core.reset([start_i], index=[i])         # restart rollout i only
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np
import torch
from gymnasium import spaces

from wmgym.env.loading import load_checkpoint
from wmgym.model.frames import frames_to_obs, obs_to_frames
from wmgym.model.tokenizer import Decoder
from wmgym.model.world_model import RolloutState
from wmgym.spec import IMAGE_KEYS, TaskSpec, load_spec
from wmgym.validation import check_action

Obs = dict[str, np.ndarray]
#: What a context observation must hold (``proprio`` is read off its ``state``).
CONTEXT_KEYS = (*IMAGE_KEYS, "state")


@dataclass
class Start:
    """Where one rollout starts: a real observation, optionally the real steps after it."""

    context: Obs
    """The real observation the model tokenizes as its context frame."""
    history: Obs | None
    """``K`` real observations that followed the context (each key ``(K, ...)``), or None."""
    actions: np.ndarray | None
    """``(K, action_dim)`` actions that led to each history observation, or None."""
    seed: int
    """Seed of the rollout's ``torch.Generator``."""

    @property
    def obs(self) -> Obs:
        """The latest real observation: what ``reset`` returns."""
        if self.history is None:
            return self.context
        return {k: v[-1] for k, v in self.history.items()}


#: What every imagined step reports in ``info``: the fields of :class:`Imagined` of that name.
INFO_KEYS = ("success", "success_prob", "uncertainty", "event_doubt")


def blank_info(n: int) -> dict[str, np.ndarray]:
    """The ``info`` of ``n`` rollouts that have not stepped yet: no success, no doubt."""
    return {k: np.zeros(n, dtype=bool if k == "success" else np.float64) for k in INFO_KEYS}


class Imagined(NamedTuple):
    """One imagined step of every rollout, as numpy arrays with a leading ``N`` axis."""

    obs: Obs
    reward: np.ndarray  # (N,) float64 in [0, 1]
    success: np.ndarray  # (N,) bool: the success head fired (and the state meets the task's rule)
    success_prob: np.ndarray  # (N,) float64: the success head's probability
    uncertainty: np.ndarray  # (N,) float64: mean entropy (nats) of the frame's token distributions
    event_doubt: np.ndarray  # (N,) float64: chance that an event beginning now parts from reality

    def info(self) -> dict[str, np.ndarray]:
        """The step's ``info`` values (:data:`INFO_KEYS`), copies, with the leading axis."""
        return {k: getattr(self, k).copy() for k in INFO_KEYS}


#: Speed presets of the learned twin (``fast=``): which transformer imagines and which
#: decoder draws the frames. ``"auto"`` is the checkpoint's distilled frame decoder when it has
#: one (about 3x cheaper per frame; reward, success and state do not depend on the decoder).
PRESETS: dict[str, tuple[str, str]] = {
    "default": ("full", "auto"),  # the full transformer: the best ranking and transfer
    "fast": ("fast", "auto"),  # the distilled transformer (one key/value head): ~2x faster
    "full": ("full", "full"),  # the full transformer and the tokenizer's own decoder
}


def resolve_preset(fast: bool | str) -> tuple[str, str]:
    """``(dynamics, decoder)`` of a speed preset.

    ``False`` or ``"default"``, ``True`` or ``"fast"``, or ``"full"``.

    Raises:
        ValueError: Any other value.
    """
    name = {False: "default", True: "fast"}.get(fast, fast) if isinstance(fast, bool) else fast
    if name not in PRESETS:
        raise ValueError(f"fast must be True, False or one of {sorted(PRESETS)}, got {fast!r}")
    return PRESETS[name]


class Imagination:
    """``N`` imagined rollouts of a task's world model, stepped by one batched model call.

    Args:
        task: Task spec or task name.
        num_envs: Number of rollouts ``N``.
        checkpoint: Checkpoint directory; defaults to the spec's.
        device: ``"auto"`` (CUDA when present) or a torch device.
        images: Return rgb/depth/mask (else ``proprio`` and ``state`` only; frames are then not
            decoded).
        fast: Speed preset (:data:`PRESETS`): ``False`` (the full transformer), ``True`` (the
            checkpoint's distilled fast transformer) or ``"full"`` (also the full decoder).
        temperature: Token sampling temperature (0 = greedy).

    """

    def __init__(
        self,
        task: TaskSpec | str,
        *,
        num_envs: int = 1,
        checkpoint: str | Path | None = None,
        device: str | torch.device = "auto",
        images: bool = True,
        fast: bool | str = False,
        temperature: float = 1.0,
    ) -> None:
        self.task = load_spec(task)
        self.images = images
        if num_envs < 1:
            raise ValueError(f"num_envs must be >= 1, got {num_envs}")
        if not temperature >= 0:
            raise ValueError(f"temperature must be >= 0, got {temperature}")
        dynamics, decoder = resolve_preset(fast)
        self.num_envs, self.temperature = num_envs, float(temperature)
        # contexts are full observations less proprio (read off their state); what the
        # rollouts return drops the images when images=False
        self.observation_space = self.task.observation_space(images=images)
        self.context_space = spaces.Dict({k: v for k, v in self.task.observation_space().items()
                                          if k in CONTEXT_KEYS})
        self.action_space = self.task.action_space()
        self.checkpoint = load_checkpoint(checkpoint or self.task.checkpoint, self.task, device)
        self.dynamics = self.checkpoint.resolve_dynamics(dynamics)
        self.model = self.checkpoint.world_model(self.dynamics)
        self.device = self.model.device
        self.decoder = self.checkpoint.resolve_decoder(decoder)
        self._frame_decoder: Decoder | None = None
        self._decoder_loaded = False
        if images:  # state-only rollouts load it when first rendered
            self.frame_decoder()
        self.state: RolloutState | None = None
        self.obs: Obs | None = None  # current observation of every rollout, (N, ...)
        self.tokens: np.ndarray | None = None  # the last sampled frame tokens, (N, n)
        self._last_tokens: torch.Tensor | None = None
        self._images: Obs | None = None  # images of every rollout, for render(), (N, ...)
        self._stale = np.zeros(num_envs, bool)  # rows whose _images are older than the tokens

    def frame_decoder(self) -> Decoder | None:
        """The frame decoder ``decoder`` names (None: the tokenizer's own), loaded once."""
        if not self._decoder_loaded:
            self._frame_decoder = self.checkpoint.frame_decoder(self.decoder)
            self._decoder_loaded = True
        return self._frame_decoder

    # ------------------------------------------------------------------ starts
    def draw_start(
        self, np_random: np.random.Generator, context: Any = None, context_actions: Any = None
    ) -> Start:
        """Chooses where one rollout starts, drawing from ``np_random`` only.

        Without ``context`` a start observation is drawn from the checkpoint's bank; then (in
        every case) the rollout's generator seed. The draws depend on ``np_random`` alone, so a
        sub-env and a single env seeded alike start alike.

        Args:
            np_random: The rollout's generator (its env's ``np_random``).
            context: None, one real observation (a dict), or the recent ones (a list of dicts,
                or a dict whose arrays have a leading time axis), oldest first.
            context_actions: With several observations, the ``(T - 1, action_dim)`` actions
                between them.

        Returns:
            The :class:`Start`.

        Raises:
            ValueError: The context or its actions do not fit the observation/action spaces.
        """
        history = actions = None
        if context is None:
            if context_actions is not None:
                raise ValueError("options['context_actions'] needs options['context']")
            bank = self.checkpoint.start_obs
            i = int(np_random.integers(self.checkpoint.num_start_obs))
            first = {k: bank[k][i] for k in self.context_space.spaces}
        else:
            seq = self._as_sequence(context)
            first = {k: v[0] for k, v in seq.items()}
            steps = len(seq["state"]) - 1
            if steps:
                if context_actions is None:
                    raise ValueError(
                        f"options['context'] holds {steps + 1} observations: pass the {steps} "
                        "actions between them as options['context_actions']"
                    )
                actions = check_action(context_actions, self.action_space, batch=steps)
                history = {k: v[1:] for k, v in seq.items()}
            elif context_actions is not None and np.size(context_actions):
                raise ValueError("options['context_actions'] given for a single observation")
        return Start(first, history, actions, int(np_random.integers(2**63)))

    def _as_sequence(self, context: Any) -> Obs:
        """Context as ``{key: (T, ...)}`` in the space's dtypes, checked key by key."""
        keys = list(self.context_space.spaces)
        if (
            isinstance(context, Sequence)
            and context
            and all(isinstance(c, Mapping) for c in context)
        ):
            missing = sorted({k for c in context for k in keys if k not in c})
            if not missing:
                context = {k: np.stack([np.asarray(c[k]) for c in context]) for k in keys}
        elif isinstance(context, Mapping):
            missing = [k for k in keys if k not in context]
            if not missing and np.ndim(context["state"]) == 1:  # one observation
                context = {k: np.asarray(context[k])[None] for k in keys}
        else:
            raise ValueError(
                "options['context'] must be an observation dict, a list of them, or a dict of "
                f"arrays with a leading time axis; got {type(context).__name__}"
            )
        if missing:
            raise ValueError(f"options['context'] lacks keys {missing} (expected {keys})")
        out = {
            k: _checked(np.asarray(context[k]), self.context_space[k], f"context[{k!r}]")
            for k in keys
        }
        lengths = {len(v) for v in out.values()}
        if len(lengths) != 1:
            raise ValueError(f"options['context'] keys hold different numbers of steps {lengths}")
        return out

    # ------------------------------------------------------------------ rollouts
    def reset(self, starts: Sequence[Start], index: Sequence[int] | None = None) -> Obs:
        """(Re)starts rollouts: all ``N`` of them, or those in ``index``.

        Args:
            starts: One :class:`Start` per rollout restarted, in the order of ``index``.
            index: Rollouts to restart; None restarts all (then ``len(starts) == N``).

        Returns:
            The restarted rollouts' observations ``{key: (len(starts), ...)}``.
        """
        rows = list(range(self.num_envs)) if index is None else [int(i) for i in index]
        if len(starts) != len(rows):
            raise ValueError(f"{len(starts)} starts for {len(rows)} rollouts")
        if len(set(rows)) != len(rows) or not all(0 <= i < self.num_envs for i in rows):
            raise ValueError(f"index {rows} must name distinct rollouts in [0, {self.num_envs})")
        full = len(rows) == self.num_envs
        if (self.state is None or self.obs is None) and not full:
            raise RuntimeError("reset every rollout before resetting some of them")
        # a full restart starts a fresh batch, in rollout order
        model_starts = [starts[j] for j in np.argsort(rows)] if full else list(starts)
        gens = [torch.Generator(device=self.device).manual_seed(s.seed) for s in model_starts]
        frames = self._frames(_stack([s.context for s in model_starts]))
        history = self._history(model_starts, full)
        latest = torch.as_tensor(np.stack([s.obs["state"] for s in model_starts]))
        if full:
            self.state = self.model.reset(frames, generators=gens, history=history, states=latest)
        else:
            idx = torch.as_tensor(rows, dtype=torch.long, device=self.device)
            self.state = self.model.reset(frames, generators=gens, state=self.state, index=idx,
                                          states=latest)
        self._store_images(_stack([{k: s.obs[k] for k in IMAGE_KEYS} for s in starts]), rows)
        obs = self._with_proprio(_stack([{k: s.obs[k] for k in self.observation_space.spaces
                                           if k != "proprio"} for s in starts]))
        if full:
            self.obs = {k: v[np.argsort(rows)] for k, v in obs.items()}
        else:
            for k, v in obs.items():
                self.obs[k][rows] = v
        return obs

    def _history(self, starts: Sequence[Start], full: bool) -> tuple[torch.Tensor, ...] | None:
        lengths = {0 if s.history is None else len(s.actions) for s in starts}
        if lengths == {0}:
            return None
        if not full:
            raise ValueError(
                "a context with history (options['context_actions']) can only start every "
                "sub-env at once; reset without options['reset_mask']"
            )
        if len(lengths) != 1:
            raise ValueError(f"contexts of different lengths {sorted(lengths)} in one reset")
        frames = self._frames(_stack([s.history for s in starts]))
        actions = torch.as_tensor(np.stack([s.actions for s in starts]), device=self.device)
        return frames, actions

    def _frames(self, obs: Obs) -> torch.Tensor:
        rgb, depth, mask = (torch.as_tensor(obs[k], device=self.device) for k in IMAGE_KEYS)
        return obs_to_frames(rgb, depth, mask, self.task.depth_range)

    def step(self, actions: np.ndarray) -> Imagined:
        """Imagines one step of every rollout with one batched model call.

        Args:
            actions: ``(N, action_dim)`` float32, already validated and clipped.

        Returns:
            The new observations (in the observation space), rewards and success probabilities.
        """
        if self.state is None or self.obs is None:
            raise RuntimeError("reset the rollouts before stepping them")
        out, self.state = self.model.step(
            self.state,
            torch.as_tensor(actions, device=self.device),
            temperature=self.temperature,
            decode=self.images,
            decoder=self.frame_decoder() if self.images else None,
        )
        space = self.observation_space.spaces
        state = out.state.to(torch.float32).cpu().numpy()
        self.tokens = out.tokens.cpu().numpy()
        self._last_tokens = out.tokens
        self.obs = self._with_proprio(
            {"state": np.clip(state, space["state"].low, space["state"].high)})
        if self.images:
            self.obs = {**self._image_obs(out.frames), **self.obs}
            self._store_images(self.obs, range(self.num_envs))
        else:  # decoded only if rendered
            self._stale[:] = True
        prob = out.success.to(torch.float64).cpu().numpy()
        return Imagined(
            obs={k: v.copy() for k, v in self.obs.items()},
            reward=out.reward.to(torch.float64).cpu().numpy(),
            success=self._success(prob, self.obs["state"]),
            success_prob=prob,
            uncertainty=out.uncertainty.to(torch.float64).cpu().numpy(),
            event_doubt=out.event_doubt.to(torch.float64).cpu().numpy(),
        )

    def _success(self, prob: np.ndarray, state: np.ndarray) -> np.ndarray:
        """The success head's verdict, checked against the task's rule on the imagined state.

        The head alone can fire on a frame whose own state breaks the rule (an object that has
        not risen, say): the state decides, as it does in the real twin.
        """
        return self.task.success(prob, state)

    def _with_proprio(self, obs: Obs) -> Obs:
        """``obs`` with ``proprio`` read off its ``state``."""
        return {**obs, "proprio": self.task.proprio(obs["state"])}

    def _image_obs(self, frames: torch.Tensor) -> Obs:
        rgb, depth, mask = frames_to_obs(frames, self.task.depth_range)
        far = float(self.context_space["depth"].high.max())
        return {"rgb": rgb.cpu().numpy(), "depth": np.clip(depth.cpu().numpy(), 0.0, far),
                "mask": mask.cpu().numpy()}

    def close(self) -> None:
        """Frees the rollouts' KV cache (the shared model stays loaded)."""
        self.state = None
        self.obs = None
        self.tokens = None

    def render(self, i: int = 0) -> np.ndarray:
        """Rgb | depth | mask of rollout ``i``'s current observation, uint8 ``(H, 3W, 3)``."""
        from wmgym.viz import tile_frame

        if self.obs is None:
            raise RuntimeError("reset the env before rendering it")
        if self._stale[i]:  # state-only rollouts decode their images when rendered
            rows = np.flatnonzero(self._stale)
            idx = torch.as_tensor(rows, device=self.device)
            frames = self.model.decode(self._last_tokens[idx], self.state, idx,
                                       decoder=self.frame_decoder())
            self._store_images(self._image_obs(frames), rows)
        return tile_frame(*(self._images[k][i] for k in IMAGE_KEYS), self.task.depth_range)

    def _store_images(self, images: Obs, rows: Sequence[int]) -> None:
        """Keeps the current images of ``rows`` for rendering."""
        rows = list(rows)
        if self._images is None:
            self._images = {k: np.zeros((self.num_envs, *images[k].shape[1:]), images[k].dtype)
                            for k in IMAGE_KEYS}
        for k in IMAGE_KEYS:
            self._images[k][rows] = images[k]
        self._stale[rows] = False


def _stack(obs: Sequence[Obs]) -> Obs:
    return {k: np.stack([o[k] for o in obs]) for k in obs[0]}


def _checked(arr: np.ndarray, space: spaces.Box, what: str) -> np.ndarray:
    """``arr (T, *space.shape)`` cast to the space's dtype, or a ValueError naming the problem."""
    if arr.ndim != len(space.shape) + 1 or arr.shape[1:] != space.shape:
        raise ValueError(f"{what} has shape {arr.shape[1:]}, expected {space.shape}")
    if not np.issubdtype(arr.dtype, np.number) and arr.dtype != np.bool_:
        raise ValueError(f"{what} must be numeric, got dtype {arr.dtype}")
    if not np.all(np.isfinite(arr)):
        raise ValueError(f"{what} contains NaN or inf")
    if np.any(arr < space.low) or np.any(arr > space.high):
        raise ValueError(
            f"{what} has values in [{arr.min()}, {arr.max()}], outside the observation space "
            f"[{space.low.min()}, {space.high.max()}]"
        )
    return arr.astype(space.dtype, copy=False)
