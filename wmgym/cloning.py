"""Behaviour cloning into SB3 actors, for a task's learned-agent family.

Demonstrations from a task's scripted experts in ``Sim-<Task>-v0`` (:func:`collect_demos`),
the maximum-likelihood fit of an SB3 SAC or PPO actor to them (:func:`behaviour_clone`), and a
frozen agent's success in the real twin (:func:`real_success`).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import gymnasium as gym
import numpy as np
import torch
from tqdm.auto import tqdm

from wmgym.agents import FrozenAgent
from wmgym.policies import make_policy
from wmgym.spec import TaskSpec

#: The batch of cloning's Adam steps (its learning rate is :data:`wmgym.sac.BC_LEARNING_RATE`).
BC_BATCH = 256


class SpacesEnv(gym.Env):
    """An env with a task's state-only spaces that never steps: to build models offline."""

    def __init__(self, spec: TaskSpec) -> None:
        self.observation_space = gym.spaces.Dict({"state": spec.observation_space(
            images=False)["state"]})
        self.action_space = spec.action_space()

    def reset(self, *, seed: int | None = None, options: dict | None = None) -> tuple[Any, dict]:
        super().reset(seed=seed)
        return {"state": np.zeros(self.observation_space["state"].shape, np.float32)}, {}

    def step(self, action: np.ndarray) -> tuple[Any, float, bool, bool, dict]:
        raise RuntimeError("a spaces-only env does not step: it builds models offline")


def collect_demos(spec: TaskSpec, policy: str, *, episodes: int, seed: int, env: Any,
                  progress: bool = True) -> dict[str, Any]:
    """Runs a scripted policy in ``Sim-<Task>-v0`` for ``episodes`` (seeds ``seed + e``).

    Args:
        spec: The task.
        policy: A :func:`wmgym.policies.make_policy` name.
        episodes: Episodes to run.
        seed: Seed of the first episode (env and policy).
        env: An open state-only ``Sim-<Task>-v0`` (kept open across runs).
        progress: Show a progress bar.

    Returns:
        ``states (N, S)``, ``actions (N, A)``, ``success`` (rate) and ``steps``.
    """
    states, actions, ok = [], [], []
    expert = make_policy(policy, task=spec)
    for e in tqdm(range(episodes), desc=f"demos {policy}", disable=not progress, leave=False):
        expert.reset(seed=seed + e)
        obs, _ = env.reset(seed=seed + e)
        done, success = False, False
        while not done:
            action = expert(obs)
            states.append(obs["state"])
            actions.append(action)
            obs, _, terminated, truncated, info = env.step(action)
            success, done = success or bool(info["success"]), terminated or truncated
        ok.append(success)
    return {"states": np.asarray(states, np.float32), "actions": np.asarray(actions, np.float32),
            "success": float(np.mean(ok)), "steps": len(states)}


def fit_features(policy: torch.nn.Module, states: np.ndarray) -> None:
    """Fits every :class:`~wmgym.sac.StandardizedState` extractor of ``policy`` on ``states``."""
    from wmgym.sac import StandardizedState

    for module in policy.modules():
        if isinstance(module, StandardizedState):
            module.fit(states)


def behaviour_clone(model: Any, states: np.ndarray, actions: np.ndarray, *, steps: int,
                    seed: int, lr: float | None = None) -> float:
    """Maximum-likelihood cloning of ``(states, actions)`` into an SB3 SAC or PPO actor.

    SAC's squashed Gaussian takes demonstrated actions clipped to
    :data:`wmgym.sac.BC_ACTION_LIMIT` (a saturated action would need an infinite mean); PPO's
    Gaussian takes them as they are. Returns the last loss.
    """
    from stable_baselines3 import SAC

    from wmgym.sac import BC_ACTION_LIMIT, BC_LEARNING_RATE

    gen = torch.Generator().manual_seed(seed)
    obs = {"state": torch.as_tensor(states)}
    acts = torch.as_tensor(actions)
    is_sac = isinstance(model, SAC)
    params = model.actor.parameters() if is_sac else model.policy.parameters()
    optimizer = torch.optim.Adam(params, lr=lr or BC_LEARNING_RATE)
    model.policy.set_training_mode(True)
    loss = torch.zeros(())
    for _ in range(steps):
        rows = torch.randint(0, len(acts), (BC_BATCH,), generator=gen)
        batch = {k: v[rows] for k, v in obs.items()}
        if is_sac:
            mean, log_std, _ = model.actor.get_action_dist_params(batch)
            dist = model.actor.action_dist.proba_distribution(mean, log_std)
            target = acts[rows].clamp(-BC_ACTION_LIMIT, BC_ACTION_LIMIT)
        else:
            dist = model.policy.get_distribution(batch)
            target = acts[rows]
        loss = -dist.log_prob(target).mean()
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    model.policy.set_training_mode(False)
    return float(loss.detach())


def real_success(agent: FrozenAgent, spec: TaskSpec, *, seeds: Sequence[int], env: Any,
                 progress: bool = True) -> dict[str, Any]:
    """A frozen agent's success and mean return in ``Sim-<Task>-v0`` on ``seeds``."""
    ok, returns = [], []
    for s in tqdm(seeds, desc=f"real episodes {agent.name}", disable=not progress,
                  leave=False):
        agent.reset(seed=int(s))
        obs, _ = env.reset(seed=int(s))
        done, success, ret = False, False, 0.0
        while not done:
            obs, reward, terminated, truncated, info = env.step(agent(obs))
            success, ret = success or bool(info["success"]), ret + float(reward)
            done = terminated or truncated
        ok.append(success)
        returns.append(ret)
    return {"success": float(np.mean(ok)), "return": round(float(np.mean(returns)), 4),
            "episodes": len(seeds), "seeds": [int(seeds[0]), int(seeds[-1])]}
