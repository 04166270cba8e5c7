"""MBPO-style replay augmentation for stable-baselines3 off-policy agents.

Every ``every`` real steps, ``rollouts`` imagined branches of ``horizon`` steps start from real
observations the agent has seen (the world model takes them as its context), act with the
current policy (sampled, as MBPO does) and land in a model buffer. Each training batch then
mixes real and imagined transitions in the ratio ``real_ratio``.

The world model needs camera images as context, while a state-only agent's replay buffer holds
states only: :func:`make_real_env` builds the real env so that every ``stride``-th observation
is also rendered and kept, images included, in a :class:`ContextBank` that branches start from.

>>> from stable_baselines3 import SAC
>>> from wmgym.mbpo import MBPO, make_real_env
>>> env, bank = make_real_env("Sim-Pick-v0", seed=0)  # state-only agent, images kept aside
>>> agent = SAC("MultiInputPolicy", env, gradient_steps=4)
>>> agent.learn(20_000, callback=MBPO(bank, horizon=3))  # doctest: +SKIP

Branches stop early where the model is unsure, so transitions it may have wrong do not reach
the agent: at a frame imagined from unfamiliar actions (``max_uncertainty``: its mean token
entropy) and where an event begins whose outcome may differ from reality's
(``max_event_doubt``: ``info["event_doubt"]``, see ``WorldModelEnv``).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, replace
from typing import Any, Literal

import gymnasium as gym
import numpy as np
import torch
from gymnasium import spaces
from gymnasium.vector import AutoresetMode
from stable_baselines3.common.callbacks import BaseCallback
from stable_baselines3.common.off_policy_algorithm import OffPolicyAlgorithm
from stable_baselines3.common.type_aliases import DictReplayBufferSamples
from stable_baselines3.common.vec_env import VecEnv, VecMonitor

from wmgym.env.sb3 import SB3VecEnv
from wmgym.rl import task_of
from wmgym.spec import IMAGE_KEYS

Obs = dict[str, np.ndarray]


# ----------------------------------------------------------------------------- real side


class ContextBank:
    """A ring buffer of recent real observations, camera images included.

    Args:
        capacity: Observations kept (64×64 rgb + depth + mask + state: about 33 kB each).
        seed: Seed of the sampling generator.

    """

    def __init__(self, capacity: int = 4096, *, seed: int = 0) -> None:
        if capacity < 1:
            raise ValueError(f"capacity must be >= 1, got {capacity}")
        self.capacity = capacity
        self.rng = np.random.default_rng(seed)
        self._data: Obs | None = None
        self._pos = 0
        self._size = 0

    def __len__(self) -> int:
        return self._size

    def add(self, obs: Mapping[str, np.ndarray]) -> None:
        """Stores one observation (a dict with the image keys and ``state``, as every later one)."""
        if self._data is None:
            self._data = {k: np.zeros((self.capacity, *np.shape(v)), np.asarray(v).dtype)
                          for k, v in obs.items()}
        for k, v in self._data.items():
            v[self._pos] = obs[k]
        self._pos = (self._pos + 1) % self.capacity
        self._size = min(self._size + 1, self.capacity)

    def sample(self, n: int) -> Obs:
        """``n`` observations drawn uniformly (with replacement), batched ``{key: (n, ...)}``."""
        if self._data is None or self._size == 0:
            raise ValueError("the context bank is empty: step the real env first")
        idx = self.rng.integers(self._size, size=n)
        return {k: v[idx] for k, v in self._data.items()}


class RecordContexts(gym.Wrapper):
    """Keeps every ``stride``-th observation of a ``Sim`` env, with its camera images, in a bank.

    The env may run state-only (``images=False``, fast): the images of a kept observation are
    rendered for it alone (``SimEnv.render_images``).
    """

    def __init__(self, env: gym.Env, bank: ContextBank, *, stride: int = 1) -> None:
        super().__init__(env)
        if stride < 1:
            raise ValueError(f"stride must be >= 1, got {stride}")
        self.bank, self.stride, self._count = bank, stride, 0

    def _keep(self, obs: Obs) -> None:
        if self._count % self.stride == 0:
            images = obs if "rgb" in obs else self.env.unwrapped.render_images()
            self.bank.add({**{k: images[k] for k in IMAGE_KEYS}, "state": obs["state"]})
        self._count += 1

    def reset(self, **kwargs: Any) -> tuple[Obs, dict[str, Any]]:
        obs, info = self.env.reset(**kwargs)
        self._keep(obs)
        return obs, info

    def step(self, action: Any) -> tuple[Obs, Any, bool, bool, dict[str, Any]]:
        obs, reward, terminated, truncated, info = self.env.step(action)
        self._keep(obs)
        return obs, reward, terminated, truncated, info


def make_real_env(
    env_id: str,
    *,
    num_envs: int = 1,
    seed: int | None = 0,
    keys: tuple[str, ...] = ("state",),
    stride: int = 1,
    capacity: int = 4096,
    **kwargs: Any,
) -> tuple[VecEnv, ContextBank]:
    """The real env of an MBPO agent (an SB3 ``VecEnv``) and the bank its branches start from.

    Args:
        env_id: A ``Sim-<Task>-v0`` id.
        num_envs: Sub-envs (a ``SyncVectorEnv``, same-step autoreset).
        seed: Seed of the first reset (sub-env ``i`` gets ``seed + i``).
        keys: Observation keys the agent sees (``("state",)``: the env runs state-only and
            renders images only for the observations kept in the bank).
        stride: Keep every ``stride``-th observation of each sub-env in the bank.
        capacity: Bank size.
        **kwargs: Passed to the env (``terminate_on_success=False`` by default, as for training).

    Returns:
        ``(env, bank)``.
    """
    bank = ContextBank(capacity, seed=0 if seed is None else seed)
    images = any(k in IMAGE_KEYS for k in keys)
    kwargs = {"terminate_on_success": False, "images": images,
              **({} if images else {"render_mode": "rgb_array"}), **kwargs}
    venv = gym.make_vec(
        env_id, num_envs=num_envs, vectorization_mode="sync",
        vector_kwargs={"autoreset_mode": AutoresetMode.SAME_STEP},
        wrappers=[lambda env: RecordContexts(env, bank, stride=stride)], **kwargs,
    )
    env: VecEnv = SB3VecEnv(venv, list(keys))
    if seed is not None:
        env.seed(seed)
    return VecMonitor(env), bank


# ----------------------------------------------------------------------------- model side


class ModelBuffer:
    """A ring buffer of imagined transitions, sampled as SB3 ``DictReplayBufferSamples``."""

    def __init__(self, capacity: int, observation_space: spaces.Dict, action_dim: int, *,
                 device: torch.device | str = "cpu") -> None:
        self.capacity, self.device = capacity, torch.device(device)
        self.obs = {k: np.zeros((capacity, *s.shape), s.dtype)
                    for k, s in observation_space.spaces.items()}
        self.next_obs = {k: np.zeros_like(v) for k, v in self.obs.items()}
        self.actions = np.zeros((capacity, action_dim), np.float32)
        self.rewards = np.zeros((capacity, 1), np.float32)
        self.dones = np.zeros((capacity, 1), np.float32)
        self.pos, self.size = 0, 0

    def add(self, obs: Obs, actions: np.ndarray, rewards: np.ndarray, next_obs: Obs,
            dones: np.ndarray) -> None:
        """Adds a batch of transitions (arrays with a leading batch axis)."""
        n = len(actions)
        idx = (self.pos + np.arange(n)) % self.capacity
        for k in self.obs:
            self.obs[k][idx] = obs[k]
            self.next_obs[k][idx] = next_obs[k]
        self.actions[idx] = actions
        self.rewards[idx, 0] = rewards
        self.dones[idx, 0] = dones
        self.pos = int((self.pos + n) % self.capacity)
        self.size = min(self.size + n, self.capacity)

    def sample(self, n: int, rng: np.random.Generator) -> tuple[Any, ...]:
        """``n`` transitions as the fields of ``DictReplayBufferSamples`` (tensors)."""
        idx = rng.integers(self.size, size=n)

        def t(x: np.ndarray) -> torch.Tensor:
            return torch.as_tensor(x[idx], device=self.device)

        return ({k: t(v).float() for k, v in self.obs.items()}, t(self.actions),
                {k: t(v).float() for k, v in self.next_obs.items()}, t(self.dones),
                t(self.rewards))


class MixedReplayBuffer:
    """The agent's replay buffer, sampling ``real_ratio`` of each batch from it, the rest imagined.

    Everything but ``sample`` (``add``, ``size``, ``pos``, …) goes to the real buffer.
    """

    def __init__(self, real: Any, model: ModelBuffer, *, real_ratio: float, seed: int = 0
                 ) -> None:
        self.real, self.model, self.real_ratio = real, model, real_ratio
        self.rng = np.random.default_rng(seed)

    def __getattr__(self, name: str) -> Any:
        if name in ("real", "model", "real_ratio", "rng"):  # not set yet (e.g. unpickling)
            raise AttributeError(name)
        return getattr(self.real, name)

    def sample(self, batch_size: int, env: Any = None) -> Any:
        """A batch of real and imagined transitions (all real while the model buffer is empty)."""
        n_real = batch_size if self.model.size == 0 else round(batch_size * self.real_ratio)
        real = self.real.sample(n_real, env=env) if n_real else None
        if n_real == batch_size:
            return real
        obs, actions, next_obs, dones, rewards = self.model.sample(batch_size - n_real, self.rng)
        if real is None:
            return DictReplayBufferSamples(obs, actions, next_obs, dones, rewards, None)
        if real.discounts is not None:
            raise ValueError("MBPO mixes 1-step transitions only: n-step replay is not supported")
        return DictReplayBufferSamples(
            {k: torch.cat([real.observations[k], obs[k]]) for k in obs},
            torch.cat([real.actions, actions]),
            {k: torch.cat([real.next_observations[k], next_obs[k]]) for k in next_obs},
            torch.cat([real.dones, dones]),
            torch.cat([real.rewards, rewards]),
            None,
        )


@dataclass
class MBPOConfig:
    """How imagined data is made and mixed in."""

    every: int = 250
    """Real steps between branchings."""
    rollouts: int = 256
    """Imagined branches per branching (one batched world-model env)."""
    horizon: int = 3
    """Imagined steps per branch."""
    real_ratio: float = 0.5
    """Fraction of each training batch drawn from real transitions."""
    model_buffer_size: int = 100_000
    """Imagined transitions kept (the oldest are overwritten)."""
    max_uncertainty: float | None = 1.2
    """Stop a branch at the first frame whose mean token entropy (nats) is above this."""
    max_event_doubt: float | None = 0.25
    """Stop a branch where an event begins with more than this chance of ending otherwise in
    reality (``info["event_doubt"]``; 0.25: success probabilities between 0.15 and 0.85)."""
    temperature: float = 1.0
    """Token sampling temperature of the world model."""
    fast: Literal["default", "fast", "full"] = "default"
    """Speed preset of the world model (see ``WM-<Task>-v0``'s ``fast``)."""
    seed: int = 0
    """Seed of the model's sampling and of batch mixing."""


class MBPO(BaseCallback):
    """MBPO replay augmentation around an SB3 off-policy agent, as a training callback.

    The task is the agent's real env's (a ``Sim-<Task>-v0``): branches run in its
    ``WM-<Task>-v0``.

    Args:
        bank: The real observations branches start from (:func:`make_real_env`).
        config: :class:`MBPOConfig`; keyword arguments override its fields.
        checkpoint: World-model checkpoint; defaults to the task spec's.
        device: World-model device (``auto``: CUDA when present).
        verbose: SB3's callback verbosity.
        **overrides: :class:`MBPOConfig` fields.

    Raises:
        ValueError: ``real_ratio`` outside [0, 1].
    """

    def __init__(self, bank: ContextBank, config: MBPOConfig | None = None, *,
                 checkpoint: str | None = None, device: str = "auto", verbose: int = 0,
                 **overrides: Any) -> None:
        super().__init__(verbose)
        base = config or MBPOConfig()
        self.config = replace(base, **overrides)
        if not 0.0 <= self.config.real_ratio <= 1.0:
            raise ValueError(f"real_ratio must be in [0, 1], got {self.config.real_ratio}")
        self.bank, self.checkpoint, self.device = bank, checkpoint, device
        self.imagined_steps = 0
        self.cut_short = 0
        self._next = self.config.every

    def _init_callback(self) -> None:
        from wmgym.env.vector_env import WorldModelVectorEnv

        agent, cfg = self.model, self.config
        if not isinstance(agent, OffPolicyAlgorithm):
            raise TypeError(f"MBPO needs an off-policy agent (SAC, TD3, …), got {type(agent)}")
        space = agent.observation_space
        if not isinstance(space, spaces.Dict):
            raise TypeError("MBPO needs a Dict-observation agent (make_real_env's env)")
        self.keys = list(space.spaces)
        self.task = task_of(agent.get_env())
        self.wm = WorldModelVectorEnv(
            self.task, num_envs=cfg.rollouts, max_episode_steps=cfg.horizon + 1,
            checkpoint=self.checkpoint, device=self.device,
            images=any(k in IMAGE_KEYS for k in self.keys), fast=cfg.fast,
            temperature=cfg.temperature, terminate_on_success=False,
        )
        self.buffer = ModelBuffer(cfg.model_buffer_size, space, agent.action_space.shape[0],
                                  device=agent.device)
        if isinstance(agent.replay_buffer, MixedReplayBuffer):  # learn() called again
            agent.replay_buffer.model = self.buffer
        else:
            agent.replay_buffer = MixedReplayBuffer(agent.replay_buffer, self.buffer,
                                                    real_ratio=cfg.real_ratio, seed=cfg.seed)
        self._seeded = False

    def _on_step(self) -> bool:
        if self.num_timesteps >= self._next and len(self.bank):
            self._next += self.config.every
            self.branch()
        return True

    def branch(self) -> dict[str, float]:
        """Imagines ``rollouts`` branches from the bank into the model buffer; returns stats."""
        cfg = self.config
        seed = None if self._seeded else cfg.seed
        self._seeded = True
        obs, _ = self.wm.reset(seed=seed, options={"context": self.bank.sample(cfg.rollouts)})
        live = np.ones(cfg.rollouts, bool)
        uncertainty = []
        added = 0
        for _ in range(cfg.horizon):
            x = {k: obs[k] for k in self.keys}
            actions, _ = self.model.predict(x, deterministic=False)
            next_obs, rewards, terminated, _, info = self.wm.step(actions)
            u = info["uncertainty"]
            uncertainty.append(float(u[live].mean()))
            keep = live.copy()  # not an alias: the cut is counted against live below
            if cfg.max_uncertainty is not None:
                keep &= u <= cfg.max_uncertainty
            if cfg.max_event_doubt is not None:
                keep &= info["event_doubt"] <= cfg.max_event_doubt
            self.cut_short += int((live & ~keep).sum())
            if keep.any():
                self.buffer.add({k: x[k][keep] for k in self.keys}, actions[keep],
                                rewards[keep], {k: next_obs[k][keep] for k in self.keys},
                                terminated[keep])
            added += int(keep.sum())
            live = keep & ~terminated
            if not live.any():
                break
            obs = next_obs
        self.imagined_steps += added
        stats = {"added": float(added), "uncertainty": float(np.mean(uncertainty)),
                 "model_buffer": float(self.buffer.size)}
        for k, v in stats.items():
            self.logger.record(f"mbpo/{k}", v)
        self.logger.record("mbpo/cut_short_total", self.cut_short)
        return stats

    def _on_training_end(self) -> None:
        self.wm.close()
