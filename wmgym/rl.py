"""What the RL uses (``wmgym transfer``, ``wmgym mbpo``) share: options, recipes, evaluation.

:class:`RLArgs` are the agent options both commands take, built by :func:`~wmgym.sac.make_sac`;
:func:`sac_recipe` gives a task's measured set of them. :func:`task_of` tells which task an env
(or an SB3 ``VecEnv`` over one) runs. :class:`RealEvaluator` scores SB3 agents in the real twin
on fixed seeds; :class:`CurveCallback` records a learning curve (real evaluations and
training-episode outcomes) while an agent trains.
"""

from __future__ import annotations

import re
import time
from collections import deque
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from stable_baselines3 import SAC
from stable_baselines3.common.base_class import BaseAlgorithm
from stable_baselines3.common.callbacks import BaseCallback
from stable_baselines3.common.vec_env import VecEnv
from tqdm.auto import tqdm

from wmgym.policy_sources import SB3Policy
from wmgym.registration import make_env
from wmgym.sac import ent_coef_value, make_sac
from wmgym.spec import TaskSpec, load_spec


@dataclass
class RLArgs:
    """Options every RL command has."""

    task: str = ""
    """Task name, e.g. ``pick`` (empty: the task ``--checkpoint`` was trained for)."""
    learning_starts: int = 1_000
    """Warm-up steps before the agent learns (uniform random actions, or ``--warmup-policy``)."""
    warmup_policy: str | None = None
    """Policy that acts in the warm-up steps instead of random actions, the same in every
    twin and method, e.g. ``pick:noise=0.3,error=0.02`` (see :func:`wmgym.policies.make_policy`):
    scripted demonstrations in the replay buffer, the usual remedy when random exploration almost
    never succeeds."""
    warmup_bc_steps: int = 0
    """With ``--warmup-policy``: when learning starts, clone the warm-up actions into the actor
    (this many gradient steps of maximum likelihood), then train the critics alone for as many
    steps before the actor follows them; 0 = plain SAC from the warm-up data."""
    warmup_bc_ratio: float = 0.0
    """With ``--warmup-policy``: Q-filtered cloning steps per SAC gradient step for the rest of
    training (the actor keeps imitating the warm-up actions where the critics rate them above its
    own); 0 = none."""
    warmup_bc_filter: bool = True
    """With ``--warmup-bc-ratio``: clone only where the critics prefer the demonstrated action
    (Q-filter); ``--no-warmup-bc-filter`` clones everywhere (a fixed pull toward the
    demonstrations, as in TD3+BC)."""
    actor_lr_scale: float = 1.0
    """The actor learns at this times SAC's learning rate (the critics at 1x): below 1, a cloned
    actor moves more slowly than its critics learn."""
    demo_ratio: float = 0.0
    """With ``--warmup-policy``: share of every SAC batch drawn from the warm-up transitions for
    the whole run (symmetric sampling, as in RLPD: Ball et al., 2023), the rest from the agent's
    own; 0 = one buffer sampled uniformly, where the demonstrations' share shrinks as it grows."""
    standardize_state: bool = False
    """Feed the agent's networks the ``state`` standardised with the warm-up transitions'
    statistics, plus the task's objects relative to the end effector
    (:class:`StandardizedState`); state-only observations."""
    critic_layer_norm: bool = False
    """LayerNorm after each hidden layer of the critics (as in RLPD): keeps their values from
    running away on actions far from the data."""
    ent_coef: str = "auto"
    """SAC's entropy coefficient: ``auto`` (tuned, starting at 1), ``auto_0.1`` (tuned, starting
    at 0.1: keeps a cloned actor's spread) or a fixed number."""
    curve_episodes: int = 10
    """Real episodes per learning-curve point."""
    checkpoint: str | None = None
    """World-model checkpoint directory; defaults to the task spec's."""
    device: str = "auto"
    """Device of the world model (``auto``: CUDA when present)."""
    progress: bool = True
    """Show progress bars."""

    #: The options above that shape the agent: results must share them to be compared.
    AGENT_SETTINGS = ("learning_starts", "warmup_policy", "warmup_bc_steps", "warmup_bc_ratio",
                      "warmup_bc_filter", "actor_lr_scale", "demo_ratio", "standardize_state",
                      "critic_layer_norm", "ent_coef")

    def make_sac(self, env: VecEnv, *, task: str | TaskSpec | None = None, **kwargs: Any) -> SAC:
        """:func:`~wmgym.sac.make_sac` with these options (warm-up, cloning, entropy)."""
        return make_sac(env, task=task, warmup_policy=self.warmup_policy,
                        bc_steps=self.warmup_bc_steps, bc_ratio=self.warmup_bc_ratio,
                        bc_filter=self.warmup_bc_filter, actor_lr_scale=self.actor_lr_scale,
                        demo_ratio=self.demo_ratio, standardize_state=self.standardize_state,
                        critic_layer_norm=self.critic_layer_norm,
                        ent_coef=ent_coef_value(self.ent_coef),
                        learning_starts=self.learning_starts, **kwargs)


def sac_recipe(task: str | TaskSpec) -> dict[str, Any]:
    """A task's measured SAC recipe: :func:`make_sac` keywords.

    >>> agent = make_sac(env, **sac_recipe("pick"), gradient_steps=16)  # doctest: +SKIP

    Raises:
        KeyError: The task has none.
    """
    from wmgym.tasks import declared

    return dict(declared(task, "SAC_RECIPE"))


_ENV_ID = re.compile(r"(?:Sim|WM)-(.+)-v\d+")


def task_of(env: Any) -> TaskSpec:
    """The task of a wmgym env: a Gymnasium env or vector env, or an SB3 ``VecEnv`` over one.

    Raises:
        ValueError: ``env`` is not (over) a ``Sim-<Task>-v0`` or ``WM-<Task>-v0``.
    """
    seen = env
    for _ in range(16):
        task = getattr(getattr(seen, "unwrapped", None), "task", None)
        if isinstance(task, TaskSpec):
            return task
        spec = getattr(seen, "spec", None)
        match = _ENV_ID.fullmatch(str(getattr(spec, "id", "")))
        if match:
            return load_spec(match.group(1))
        envs = getattr(seen, "envs", None)  # a Gymnasium SyncVectorEnv
        seen = getattr(seen, "venv", None) or (envs[0] if envs else None)
        if seen is None:
            break
    raise ValueError(f"cannot tell the task of {type(env).__name__}: not a Sim-<Task>-v0 or "
                     "WM-<Task>-v0 env; pass task=")


#: Seeds of real evaluation episodes start here (training episodes use ``seed + i``).
EVAL_SEED_OFFSET = 100_000


@dataclass
class RealEvaluator:
    """Evaluates SB3 agents in ``Sim-<Task>-v0`` (state only) on fixed seeds.

    One robosuite env is kept open across calls (making one takes seconds).
    """

    spec: TaskSpec
    seed: int = EVAL_SEED_OFFSET
    _env: Any = field(default=None, repr=False)

    def __call__(self, model: BaseAlgorithm, episodes: int) -> dict[str, float]:
        """Success rate and mean return of ``model`` (deterministic) over ``episodes``."""
        if self._env is None:
            self._env = make_env(self.spec.sim_id, images=False)
        policy = SB3Policy(model)
        success, returns = [], []
        for e in range(episodes):
            obs, _ = self._env.reset(seed=self.seed + e)
            done, ok, ret = False, False, 0.0
            while not done:
                obs, reward, terminated, truncated, info = self._env.step(policy(obs))
                ok, ret = ok or bool(info["success"]), ret + float(reward)
                done = terminated or truncated
            success.append(ok)
            returns.append(ret)
        return {"success": float(np.mean(success)), "return": float(np.mean(returns))}

    def close(self) -> None:
        """Closes the robosuite env."""
        if self._env is not None:
            self._env.close()
            self._env = None


class CurveCallback(BaseCallback):
    """Records training-episode outcomes and, every ``every`` steps, a real evaluation.

    The time spent evaluating is measured, so training wall time can exclude it.

    Args:
        evaluate: Scores the agent in the real twin.
        every: Training steps between evaluations (0: none while training).
        episodes: Real episodes per evaluation.
        total: Training steps, for the progress bar.
        progress: Show a progress bar.
        desc: The run's name in the progress bar and the printed lines.
    """

    def __init__(self, evaluate: RealEvaluator, *, every: int, episodes: int, total: int,
                 progress: bool = True, desc: str = "train") -> None:
        super().__init__()
        self.evaluate, self.every, self.episodes = evaluate, every, episodes
        self.next_eval = every if every > 0 else None
        self.curve: list[dict[str, float]] = []
        self.eval_seconds = 0.0
        self.recent: deque[tuple[bool, float]] = deque(maxlen=50)
        self._ok: np.ndarray | None = None
        self._ret: np.ndarray | None = None
        self.desc = desc
        self.bar = tqdm(total=total, desc=desc, disable=not progress, unit="step")

    def _on_step(self) -> bool:
        infos, dones = self.locals["infos"], self.locals["dones"]
        rewards = self.locals["rewards"]
        if self._ok is None:
            self._ok, self._ret = np.zeros(len(dones), bool), np.zeros(len(dones))
        self._ok |= np.array([bool(i.get("success", False)) for i in infos])
        self._ret += rewards
        for i in np.flatnonzero(dones):
            self.recent.append((bool(self._ok[i]), float(self._ret[i])))
            self._ok[i], self._ret[i] = False, 0.0
        self.bar.update(len(dones))
        if self.next_eval is not None and self.num_timesteps >= self.next_eval:
            self.next_eval += self.every
            self.record()
        return True

    def record(self) -> dict[str, float]:
        """Evaluates the current agent in the real twin and appends a curve point."""
        start = time.perf_counter()
        real = self.evaluate(self.model, self.episodes)
        self.eval_seconds += time.perf_counter() - start
        train_ok = [ok for ok, _ in self.recent]
        point = {
            "step": int(self.num_timesteps),
            "real_success": real["success"],
            "real_return": real["return"],
            "train_success": float(np.mean(train_ok)) if train_ok else float("nan"),
            "train_return": float(np.mean([r for _, r in self.recent])) if train_ok else 0.0,
        }
        self.curve.append(point)
        for key, value in point.items():
            if key != "step":
                self.logger.record(f"transfer/{key}", value)
        self.bar.set_postfix(real=f"{real['success']:.2f}", train=f"{point['train_success']:.2f}")
        tqdm.write(f"{self.desc} step {point['step']}: real success {real['success']:.2f} "
                   f"return {real['return']:.1f}; training episodes success "
                   f"{point['train_success']:.2f} return {point['train_return']:.1f}")
        return point

    def _on_training_end(self) -> None:
        self.bar.close()


def steps_to(curve: list[dict[str, float]], threshold: float, key: str = "real_success"
             ) -> int | None:
    """The first curve step at which ``key`` reaches ``threshold`` (None if never)."""
    return next((int(p["step"]) for p in curve if p[key] >= threshold), None)
