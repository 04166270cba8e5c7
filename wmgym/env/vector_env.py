"""WM-<Task>-v0 as a native Gymnasium vector env: one batched model call steps every sub-env."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import gymnasium as gym
import numpy as np
import torch
from gymnasium.error import ResetNeeded
from gymnasium.utils import seeding
from gymnasium.vector import AutoresetMode
from gymnasium.vector.utils import batch_space

from wmgym.env.core import Imagination, Obs, Start, blank_info
from wmgym.spec import TaskSpec, load_spec
from wmgym.validation import check_action, check_render_mode


class WorldModelVectorEnv(gym.vector.VectorEnv):
    """``N`` imagined episodes of a task stepped together: the ``vector_entry_point`` of WM envs.

    Sub-env ``i`` behaves as ``gym.make("WM-<Task>-v0")`` reset with seed ``s + i`` when the
    vector env is reset with seed ``s`` (Gymnasium's convention): each sub-env owns an
    ``np_random`` and a ``torch.Generator`` seeded from it, exactly as the single env does, and
    both go through the same :class:`~wmgym.env.core.Imagination` core. A finished sub-env resets
    in the same step (``AutoresetMode.SAME_STEP``): the returned observation starts its next
    episode, and ``infos["final_obs"]`` / ``infos["final_info"]`` (masked by ``"_final_obs"`` /
    ``"_final_info"``) hold the last step, as ``SyncVectorEnv`` lays them out.

    >>> import gymnasium as gym, wmgym
    >>> envs = gym.make_vec("WM-Pick-v0", num_envs=4)  # or checkpoint="path/to/checkpoint"
    >>> obs, infos = envs.reset(seed=0)
    >>> obs["rgb"].shape
    (4, 64, 64, 3)
    >>> obs, rewards, terminations, truncations, infos = envs.step(envs.action_space.sample())

    Reset options: ``"context"``, a dict of real observations with a leading ``N`` axis (or
    ``(N, T, ...)`` with ``"context_actions"`` ``(N, T - 1, action_dim)``); ``"reset_mask"``, a bool
    ``(N,)`` array of the sub-envs to reset (the others carry on).

    Args:
        task: Task spec or task name (``gym.make_vec`` passes the registered task).
        num_envs: Number of sub-envs.
        max_episode_steps: Truncate episodes after this many steps (default: the spec's).
        checkpoint, device, images, fast, temperature, terminate_on_success: As for
            :class:`~wmgym.env.world_model_env.WorldModelEnv`.
        render_mode: ``"rgb_array"`` (``render`` returns one frame per sub-env) or None.

    """

    metadata = {
        "render_modes": ["rgb_array"],
        "render_fps": 20,
        "autoreset_mode": AutoresetMode.SAME_STEP,
    }

    def __init__(
        self,
        task: TaskSpec | str,
        *,
        num_envs: int = 1,
        max_episode_steps: int | None = None,
        checkpoint: str | Path | None = None,
        device: str | torch.device = "auto",
        images: bool = True,
        fast: bool | str = False,
        temperature: float = 1.0,
        terminate_on_success: bool | None = None,
        render_mode: str | None = None,
    ) -> None:
        self.task = load_spec(task)
        check_render_mode(render_mode)
        self.num_envs = num_envs
        self.render_mode = render_mode
        self.max_episode_steps = (
            self.task.max_episode_steps if max_episode_steps is None else max_episode_steps
        )
        self.terminate_on_success = (
            self.task.terminate_on_success if terminate_on_success is None else terminate_on_success
        )
        self.metadata = {**self.metadata, "render_fps": self.task.control_freq}
        self.core = Imagination(self.task, num_envs=num_envs, checkpoint=checkpoint,
                                device=device, images=images, fast=fast,
                                temperature=temperature)
        self.single_observation_space = self.core.observation_space
        self.single_action_space = self.core.action_space
        self.observation_space = batch_space(self.single_observation_space, num_envs)
        self.action_space = batch_space(self.single_action_space, num_envs)
        self._env_random: list[np.random.Generator | None] = [None] * num_envs
        self._elapsed = np.zeros(num_envs, dtype=np.int64)
        self._started = False

    # ------------------------------------------------------------------ gym API
    def reset(
        self,
        *,
        seed: int | Sequence[int | None] | None = None,
        options: dict[str, Any] | None = None,
    ) -> tuple[Obs, dict[str, Any]]:
        """Resets every sub-env, or those in ``options["reset_mask"]``.

        Args:
            seed: None, an int ``s`` (sub-env ``i`` gets ``s + i``) or one seed per sub-env.
            options: ``"context"``, ``"context_actions"``, ``"reset_mask"`` (see the class).

        Returns:
            ``(observations, infos)`` of all sub-envs; ``infos`` as ``SyncVectorEnv`` batches
            the single env's reset info.
        """
        n = self.num_envs
        if seed is None or isinstance(seed, (int, np.integer)):
            if seed is not None:
                super().reset(seed=int(seed))
            seeds: list[int | None] = [None if seed is None else int(seed) + i for i in range(n)]
        else:
            seeds = list(seed)
            if len(seeds) != n:
                raise ValueError(f"{len(seeds)} seeds given for num_envs={n}")
        options = dict(options or {})
        mask = self._reset_mask(options.pop("reset_mask", None))
        rows = np.flatnonzero(mask)
        contexts = self._split_context(options.get("context"), options.get("context_actions"), rows)
        starts: list[Start] = []
        for i, (context, actions) in zip(rows, contexts):
            if seeds[i] is not None or self._env_random[i] is None:
                self._env_random[i], _ = seeding.np_random(seeds[i])
            starts.append(self.core.draw_start(self._env_random[i], context, actions))
        self.core.reset(starts, index=None if mask.all() else rows)
        self._elapsed[rows] = 0
        self._started = True
        infos = _masked(blank_info(n), mask)
        return {k: v.copy() for k, v in self.core.obs.items()}, infos

    def step(self, actions: Any) -> tuple[Obs, np.ndarray, np.ndarray, np.ndarray, dict[str, Any]]:
        """Imagines one step of every sub-env in one model call; finished ones reset at once."""
        if not self._started:
            raise ResetNeeded("Cannot call `step` before `reset` on a WorldModelVectorEnv")
        actions = check_action(actions, self.single_action_space, batch=self.num_envs)
        out = self.core.step(actions)
        success = out.success
        terminated = success & self.terminate_on_success
        self._elapsed += 1
        if self.max_episode_steps is None:
            truncated = np.zeros(self.num_envs, dtype=bool)
        else:
            truncated = self._elapsed >= self.max_episode_steps
        infos: dict[str, Any] = _masked(out.info(), np.ones(self.num_envs, dtype=bool))
        obs, done = out.obs, terminated | truncated
        if done.any():
            rows = np.flatnonzero(done)
            final_obs = np.full(self.num_envs, None, dtype=object)
            for i in rows:
                final_obs[i] = {k: v[i].copy() for k, v in obs.items()}
            infos["final_obs"], infos["_final_obs"] = final_obs, done.copy()
            blank = blank_info(self.num_envs)
            infos["final_info"] = _masked(
                {k: np.where(done, v, blank[k]) for k, v in out.info().items()}, done)
            infos["_final_info"] = done.copy()
            starts = [self.core.draw_start(self._env_random[i]) for i in rows]
            fresh = self.core.reset(starts, index=rows)
            for k, v in fresh.items():
                obs[k][rows] = v
            for k, v in blank.items():
                infos[k][rows] = v[rows]
            self._elapsed[rows] = 0
        return obs, out.reward, terminated, truncated, infos

    def render(self) -> tuple[np.ndarray, ...] | None:
        """One rgb | depth | mask frame per sub-env (``render_mode="rgb_array"``), else None."""
        if self.render_mode != "rgb_array":
            return None
        return tuple(self.core.render(i) for i in range(self.num_envs))

    def close_extras(self, **kwargs: Any) -> None:
        """Frees the rollouts' memory; the shared weights stay loaded for other envs."""
        self.core.close()
        self._started = False

    # ------------------------------------------------------------------ options
    def _reset_mask(self, mask: Any) -> np.ndarray:
        """``options["reset_mask"]`` checked as ``SyncVectorEnv`` checks it; None = all."""
        n = self.num_envs
        if mask is None:
            return np.ones(n, dtype=bool)
        if not isinstance(mask, np.ndarray):
            raise TypeError(f"`options['reset_mask']` must be a numpy array, got {type(mask)}")
        if mask.shape != (n,):
            raise ValueError(f"`options['reset_mask']` must have shape `({n},)`, got {mask.shape}")
        if mask.dtype != np.bool_:
            raise TypeError(f"`options['reset_mask']` must have `dtype=np.bool_`, got {mask.dtype}")
        if not mask.any():
            raise ValueError(
                "`options['reset_mask']` must contain a boolean array with at least one True "
                f"value, got reset_mask={mask}"
            )
        if not self._started and not mask.all():
            raise ResetNeeded("reset every sub-env once before resetting some with reset_mask")
        return mask

    def _split_context(self, context: Any, actions: Any, rows: np.ndarray) -> list[tuple[Any, Any]]:
        """Batched ``options["context"]`` (leading ``N``, or one per reset sub-env) per sub-env."""
        if context is None:
            if actions is not None:
                raise ValueError("options['context_actions'] needs options['context']")
            return [(None, None)] * len(rows)
        if not isinstance(context, Mapping) or "state" not in context:
            raise ValueError(
                "options['context'] of a vector env must be a dict of arrays with a leading "
                f"num_envs axis, got {type(context).__name__}"
            )
        lead = len(np.asarray(context["state"]))
        if lead == self.num_envs:
            pick = rows
        elif lead == len(rows):
            pick = np.arange(len(rows))
        else:
            raise ValueError(
                f"options['context'] holds {lead} observations: expected num_envs="
                f"{self.num_envs} (or one per reset sub-env, {len(rows)})"
            )
        arrays = {k: np.asarray(v) for k, v in context.items()}
        acts = None if actions is None else np.asarray(actions)
        return [
            ({k: v[p] for k, v in arrays.items()}, None if acts is None else acts[p]) for p in pick
        ]


def _masked(values: Mapping[str, np.ndarray], mask: np.ndarray) -> dict[str, np.ndarray]:
    """A vector env's info: each value with its ``_key`` mask (which sub-envs it holds for)."""
    out: dict[str, np.ndarray] = {}
    for k, v in values.items():
        out[k], out[f"_{k}"] = v, mask.copy()
    return out
