"""WM-<Task>-v0: the learned twin, a Gymnasium env that imagines with the world model."""

from __future__ import annotations

from pathlib import Path
from typing import Any, SupportsFloat

import gymnasium as gym
import numpy as np
import torch

from wmgym.env.core import Imagination, Obs
from wmgym.spec import TaskSpec, load_spec
from wmgym.validation import check_action, check_render_mode


class WorldModelEnv(gym.Env):
    """The learned twin of a task: same spaces, reward and ``info["success"]`` as ``Sim-<Task>-v0``.

    ``reset`` starts from a real observation: ``options["context"]`` (one observation, or the
    recent ones with ``options["context_actions"]`` between them), else one drawn with
    ``np_random`` from the checkpoint's bank of real start observations. ``step`` imagines the
    next observation, the reward (in [0, 1]) and the success probability with the world model;
    ``info["success"]`` is the success head's verdict (probability > 0.5) where the imagined
    state also meets the task's rule, as the real twin's does (``success_needs_state``);
    ``terminated`` is ``info["success"]`` when ``terminate_on_success``;
    truncation is the ``TimeLimit`` wrapper's (``gym.make`` adds it). ``info["uncertainty"]`` is
    the mean entropy (nats) of the token distributions the frame was sampled from: it rises
    where the model saw little data like this (an unfamiliar action), for penalties or to cut
    model rollouts short. Each reset seeds the
    env's own ``torch.Generator`` from ``np_random``, so seeded rollouts reproduce exactly.
    Weights load once per process and are shared by every instance.

    >>> import gymnasium as gym, wmgym
    >>> env = gym.make("WM-Pick-v0")  # or checkpoint="path/to/checkpoint"
    >>> obs, info = env.reset(seed=0)
    >>> obs, reward, terminated, truncated, info = env.step(env.action_space.sample())
    >>> sorted(obs), sorted(info)
    (['depth', 'mask', 'rgb', 'state'], ['success', 'success_prob', 'uncertainty'])

    Args:
        spec: Task spec or task name.
        device: ``"auto"`` (CUDA when present), ``"cpu"``, ``"cuda"``, ….
        checkpoint: Checkpoint directory; defaults to the spec's.
        temperature: Token sampling temperature (0 = greedy, deterministic).
        top_k: Sample among the ``top_k`` most likely tokens only (None = all).
        images: Return rgb/depth/mask (else ``state`` only, like ``Sim``'s ``images=False``;
            frames are then not decoded, which is faster). Contexts still need images.
        decoding: ``auto`` (the checkpoint's parallel head when it has one), ``parallel``, or
            ``autoregressive`` (token by token; slower).
        terminate_on_success: Override the spec's setting.
        success_needs_state: Success needs the imagined state to meet the task's rule (the
            cube above ``TaskSpec.success_cube_z``) as well as the success head to fire; False:
            the head alone.
        render_mode: ``"rgb_array"`` (rgb | depth | mask of the current observation) or None.
        kv_cache: Precision of the cached keys and values (``float32``, ``bfloat16`` or
            ``auto``; see :class:`~wmgym.env.core.Imagination`).
        decoder: ``full``, ``fast`` (the checkpoint's distilled frame decoder) or ``auto``
            (fast when there is one; see :class:`~wmgym.env.core.Imagination`).
        dynamics: ``full`` (the checkpoint's transformer), ``fast`` (its distilled one with
            one key/value head: faster) or ``auto`` (full; see
            :class:`~wmgym.env.core.Imagination`).

    """

    metadata = {"render_modes": ["rgb_array"], "render_fps": 20}

    def __init__(
        self,
        spec: TaskSpec | str = "pick",
        device: str | torch.device = "auto",
        checkpoint: str | Path | None = None,
        temperature: float = 1.0,
        top_k: int | None = None,
        images: bool = True,
        decoding: str = "auto",
        terminate_on_success: bool | None = None,
        success_needs_state: bool = True,
        render_mode: str | None = None,
        kv_cache: str = "auto",
        decoder: str = "auto",
        dynamics: str = "auto",
    ) -> None:
        self.task = load_spec(spec) if isinstance(spec, str) else spec
        check_render_mode(render_mode)
        self.render_mode = render_mode
        self.terminate_on_success = (
            self.task.terminate_on_success if terminate_on_success is None else terminate_on_success
        )
        self.metadata = {**self.metadata, "render_fps": self.task.control_freq}
        self.core = Imagination(self.task, 1, checkpoint, device, temperature, top_k,
                                 images, decoding, success_needs_state, kv_cache, decoder,
                                 dynamics=dynamics)
        self.observation_space = self.core.observation_space
        self.action_space = self.core.action_space

    def reset(
        self, *, seed: int | None = None, options: dict[str, Any] | None = None
    ) -> tuple[Obs, dict[str, Any]]:
        """Starts an imagined episode from a real observation.

        Args:
            seed: Seeds ``np_random`` (and through it the start draw and the model's sampling).
            options: ``"context"``: a real observation dict, or a list of recent ones (oldest
                first) with ``"context_actions"``, the ``(T - 1, 4)`` actions between them.

        Returns:
            ``(observation, info)``: the (latest) real observation, ``{"success": False,
            "success_prob": 0.0, "uncertainty": 0.0}``.
        """
        super().reset(seed=seed)
        options = options or {}
        start = self.core.draw_start(
            self.np_random, options.get("context"), options.get("context_actions")
        )
        obs = self.core.reset([start])
        return {k: v[0] for k, v in obs.items()}, {"success": False, "success_prob": 0.0,
                                                "uncertainty": 0.0}

    def step(self, action: Any) -> tuple[Obs, SupportsFloat, bool, bool, dict[str, Any]]:
        """Imagines one step; a bad action raises ValueError, an out-of-bounds one is clipped."""
        action = check_action(action, self.action_space)
        out = self.core.step(action[None])
        success = bool(out.success[0])
        obs = {k: v[0] for k, v in out.obs.items()}
        info = {"success": success, "success_prob": float(out.success_prob[0]),
                "uncertainty": float(out.uncertainty[0])}
        return obs, float(out.reward[0]), success and self.terminate_on_success, False, info

    def render(self) -> np.ndarray | None:
        """Rgb | depth | mask of the current (imagined or context) observation, uint8."""
        if self.render_mode != "rgb_array":
            return None
        return self.core.render(0)

    def close(self) -> None:
        """Frees the imagined rollout's memory; the shared weights stay loaded for other envs."""
        self.core.close()
