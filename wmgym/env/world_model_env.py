"""WM-<Task>-v0: the learned twin, a Gymnasium env that imagines with the world model."""

from __future__ import annotations

from pathlib import Path
from typing import Any, SupportsFloat

import gymnasium as gym
import numpy as np
import torch

from wmgym.env.core import Imagination, Obs, blank_info
from wmgym.spec import TaskSpec, load_spec
from wmgym.validation import check_action, check_render_mode


class WorldModelEnv(gym.Env):
    """The learned twin of a task: same spaces, reward and ``info["success"]`` as ``Sim-<Task>-v0``.

    ``reset`` starts from a real observation: ``options["context"]`` (one observation, or the
    recent ones with ``options["context_actions"]`` between them), else one drawn with
    ``np_random`` from the checkpoint's bank of real start observations. ``step`` imagines the
    next observation, the reward (in [0, 1]) and the success probability with the world model;
    ``info["success"]`` is the success head's verdict (probability > 0.5) where the imagined
    state also meets the task's rule, as the real twin's does;
    ``terminated`` is ``info["success"]`` when ``terminate_on_success``;
    truncation is the ``TimeLimit`` wrapper's (``gym.make`` adds it). ``info["uncertainty"]`` is
    the mean entropy (nats) of the token distributions the frame was sampled from: it rises
    where the model saw little data like this (an unfamiliar action), for penalties or to cut
    model rollouts short. ``info["event_doubt"]`` is the chance that the task's event (Pick's
    grasp) beginning at this step ends otherwise in reality, ``2 p (1 - p)`` for the event
    head's probability ``p`` that it succeeds (0 at steps where none begins): where imagined
    and real outcomes part. Each reset seeds the
    env's own ``torch.Generator`` from ``np_random``, so seeded rollouts reproduce exactly.
    Weights load once per process and are shared by every instance.

    >>> import gymnasium as gym, wmgym
    >>> env = gym.make("WM-Pick-v0")  # or checkpoint="path/to/checkpoint"
    >>> obs, info = env.reset(seed=0)
    >>> obs, reward, terminated, truncated, info = env.step(env.action_space.sample())
    >>> sorted(obs)
    ['depth', 'mask', 'proprio', 'rgb', 'state']
    >>> sorted(info)
    ['event_doubt', 'success', 'success_prob', 'uncertainty']

    Args:
        task: Task spec or task name (``gym.make`` passes the registered task).
        checkpoint: Checkpoint directory; defaults to the spec's.
        device: ``"auto"`` (CUDA when present), ``"cpu"``, ``"cuda"``, …; ``"cuda"`` without
            CUDA raises ``ValueError``.
        images: Return rgb/depth/mask (else ``proprio`` and ``state`` only, like ``Sim``'s
            ``images=False``; frames are then not decoded, which is faster). Contexts still need
            images.
        fast: Speed preset: ``False`` (the full transformer), ``True`` (the checkpoint's
            distilled fast transformer: about twice as fast, ranks policies a little less
            well) or ``"full"`` (also the tokenizer's own frame decoder); see
            :data:`~wmgym.env.core.PRESETS`.
        temperature: Token sampling temperature (0 = greedy, deterministic).
        terminate_on_success: Override the spec's setting.
        render_mode: ``"rgb_array"`` (rgb | depth | mask of the current observation) or None.

    """

    metadata = {"render_modes": ["rgb_array"], "render_fps": 20}

    def __init__(
        self,
        task: TaskSpec | str,
        *,
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
        self.render_mode = render_mode
        self.terminate_on_success = (
            self.task.terminate_on_success if terminate_on_success is None else terminate_on_success
        )
        self.metadata = {**self.metadata, "render_fps": self.task.control_freq}
        self.core = Imagination(self.task, num_envs=1, checkpoint=checkpoint, device=device,
                                images=images, fast=fast, temperature=temperature)
        self.observation_space = self.core.observation_space
        self.action_space = self.core.action_space

    def reset(
        self, *, seed: int | None = None, options: dict[str, Any] | None = None
    ) -> tuple[Obs, dict[str, Any]]:
        """Starts an imagined episode from a real observation.

        Args:
            seed: Seeds ``np_random`` (and through it the start draw and the model's sampling).
            options: ``"context"``: a real observation dict, or a list of recent ones (oldest
                first) with ``"context_actions"``, the ``(T - 1, action_dim)`` actions between them.

        Returns:
            ``(observation, info)``: the (latest) real observation and an ``info`` with no
            success and no doubt (``success`` False, the others 0).
        """
        super().reset(seed=seed)
        options = options or {}
        start = self.core.draw_start(
            self.np_random, options.get("context"), options.get("context_actions")
        )
        obs = self.core.reset([start])
        return {k: v[0] for k, v in obs.items()}, {k: v[0].item()
                                                   for k, v in blank_info(1).items()}

    def step(self, action: Any) -> tuple[Obs, SupportsFloat, bool, bool, dict[str, Any]]:
        """Imagines one step; a bad action raises ValueError, an out-of-bounds one is clipped."""
        action = check_action(action, self.action_space)
        out = self.core.step(action[None])
        success = bool(out.success[0])
        obs = {k: v[0] for k, v in out.obs.items()}
        info = {k: v[0].item() for k, v in out.info().items()}
        return obs, float(out.reward[0]), success and self.terminate_on_success, False, info

    def render(self) -> np.ndarray | None:
        """Rgb | depth | mask of the current (imagined or context) observation, uint8."""
        if self.render_mode != "rgb_array":
            return None
        return self.core.render(0)

    def close(self) -> None:
        """Frees the imagined rollout's memory; the shared weights stay loaded for other envs."""
        self.core.close()
