"""Shared pieces of the RL experiments (``wmgym transfer``, ``wmgym mbpo``).

:class:`RealEvaluator` scores SB3 agents in the real twin on fixed seeds; :class:`CurveCallback`
records a learning curve (real evaluations and training-episode outcomes) while an agent trains.
"""

from __future__ import annotations

import time
from collections import deque
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from gymnasium import spaces
from stable_baselines3 import SAC
from stable_baselines3.common.base_class import BaseAlgorithm
from stable_baselines3.common.buffers import DictReplayBuffer
from stable_baselines3.common.callbacks import BaseCallback
from stable_baselines3.common.policies import ContinuousCritic
from stable_baselines3.common.torch_layers import BaseFeaturesExtractor
from stable_baselines3.common.vec_env import VecEnv
from stable_baselines3.sac.policies import MultiInputPolicy
from tqdm.auto import tqdm

from wmgym.policies import Policy, make_policy
from wmgym.policy_sources import SB3Policy
from wmgym.registration import make_env
from wmgym.spec import CUBE_POS, EEF_POS, TaskSpec


@dataclass
class RLArgs:
    """Options every RL experiment command has."""

    task: str = "pick"
    """Task spec name (``envs/<task>.toml``)."""
    learning_starts: int = 1_000
    """Warm-up steps before the agent learns (uniform random actions, or ``--warmup-policy``)."""
    warmup_policy: str | None = None
    """Policy that acts in the warm-up steps instead of random actions, the same in every
    twin and method, e.g. ``pick:noise=0.3,error=0.02`` (see :func:`wmgym.policies.make_policy`):
    scripted demonstrations in the replay buffer, the usual remedy when random exploration almost
    never lifts the cube."""
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
    statistics, plus the cube's position relative to the gripper (:class:`StandardizedState`);
    state-only observations."""
    critic_layer_norm: bool = False
    """LayerNorm after each hidden layer of the critics (as in RLPD): keeps their values from
    running away on actions far from the data."""
    ent_coef: str = "auto"
    """SAC's entropy coefficient: ``auto`` (tuned, starting at 1), ``auto_0.1`` (tuned, starting
    at 0.1: keeps a cloned actor's spread) or a fixed number."""
    curve_episodes: int = 10
    """Real episodes per learning-curve point."""
    checkpoint: str | None = None
    """World-model checkpoint directory; defaults to the spec's."""
    device: str = "auto"
    """Device of the world model (``auto``: CUDA when present)."""
    progress: bool = True
    """Show progress bars."""

    #: The options above that shape the agent: results must share them to be compared.
    AGENT_SETTINGS = ("learning_starts", "warmup_policy", "warmup_bc_steps", "warmup_bc_ratio",
                      "warmup_bc_filter", "actor_lr_scale", "demo_ratio", "standardize_state",
                      "critic_layer_norm", "ent_coef")

    def make_sac(self, env: VecEnv, **kwargs: Any) -> SAC:
        """:func:`make_sac` with these options (warm-up, cloning, entropy coefficient)."""
        return make_sac(env, self.warmup_policy, self.warmup_bc_steps, self.warmup_bc_ratio,
                        bc_filter=self.warmup_bc_filter, actor_lr_scale=self.actor_lr_scale,
                        demo_ratio=self.demo_ratio, standardize_state=self.standardize_state,
                        critic_layer_norm=self.critic_layer_norm,
                        ent_coef=ent_coef_value(self.ent_coef),
                        learning_starts=self.learning_starts, **kwargs)


#: The warm-up policy of ``benchmarks/transfer_qfilter.json`` and ``benchmarks/mbpo.json``: a noisy,
#: imperfect scripted pick (70% of its episodes lift in robosuite).
PICK_DEMOS = "pick:noise=0.2,error=0.015,drop_prob=0.1"

#: The agent of ``benchmarks/transfer.json``, the same in both twins (:func:`make_sac` keywords):
#: SAC whose 5,000 warm-up steps are a clean scripted pick, cloned into the actor and kept at half
#: of every batch and as an unfiltered cloning term, with a 10x slower actor, LayerNorm critics
#: and standardised state features.
PICK_RECIPE: dict[str, Any] = {
    "warmup_policy": "pick:noise=0.1", "learning_starts": 5000, "bc_steps": 5000,
    "bc_ratio": 1.0, "bc_filter": False, "actor_lr_scale": 0.1, "demo_ratio": 0.5,
    "standardize_state": True, "critic_layer_norm": True, "ent_coef": "auto_0.05",
}

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
    """

    def __init__(self, evaluate: RealEvaluator, every: int, episodes: int, total: int,
                 progress: bool, desc: str) -> None:
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



#: Demo actions are clipped to this magnitude for behaviour cloning through the tanh squashing.
BC_ACTION_LIMIT = 0.97
#: Adam's learning rate for behaviour cloning (SAC's own optimizers are left untouched).
BC_LEARNING_RATE = 1e-3


class StandardizedState(BaseFeaturesExtractor):
    """Features of a state-only observation: ``(state - mean) / std`` and ``(cube - eef) / s``.

    The raw state is in metres, its informative differences (a centimetre to the cube, a few
    millimetres of finger travel) tiny beside the table height, which an MLP fed raw state barely
    resolves. The statistics are fitted once (:meth:`fit`, from the warm-up transitions) and saved
    with the policy, so a loaded agent sees the features it was trained on. The relative position
    is robosuite's own ``gripper_to_cube_pos`` observation.
    """

    def __init__(self, observation_space: spaces.Dict, eef: slice = EEF_POS,
                 cube: slice = CUBE_POS) -> None:
        if set(observation_space.spaces) != {"state"}:
            raise ValueError("StandardizedState takes state-only observations, got keys "
                             f"{sorted(observation_space.spaces)}")
        n = observation_space["state"].shape[0]
        super().__init__(observation_space, features_dim=n + 3)
        self.eef, self.cube = eef, cube
        self.register_buffer("mean", torch.zeros(n))
        self.register_buffer("std", torch.ones(n))
        self.register_buffer("relative_std", torch.ones(3))
        self.register_buffer("fitted", torch.zeros((), dtype=torch.bool))

    def _relative(self, state: torch.Tensor) -> torch.Tensor:
        return state[..., self.cube] - state[..., self.eef]

    def fit(self, states: np.ndarray) -> None:
        """Sets the statistics from ``states`` ``(N, n)``."""
        x = torch.as_tensor(np.asarray(states, np.float32).reshape(-1, self.mean.numel()))
        self.mean.copy_(x.mean(0))
        self.std.copy_(x.std(0).clamp_min(1e-3))  # a field that never moved stays finite
        self.relative_std.copy_(self._relative(x).std(0).clamp_min(1e-3))
        self.fitted.fill_(True)

    def forward(self, observations: dict[str, torch.Tensor]) -> torch.Tensor:
        state = observations["state"]
        return torch.cat([(state - self.mean) / self.std,
                          self._relative(state) / self.relative_std], dim=-1)


class LayerNormCritic(ContinuousCritic):
    """SB3's SAC critics with ``LayerNorm`` between each hidden ``Linear`` and its activation."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        for i, q_net in enumerate(self.q_networks):
            linears = [m for m in q_net if isinstance(m, torch.nn.Linear)]
            layers: list[torch.nn.Module] = []
            for m in q_net:
                layers.append(m)
                if isinstance(m, torch.nn.Linear) and m is not linears[-1]:
                    layers.append(torch.nn.LayerNorm(m.out_features))
            self.q_networks[i] = torch.nn.Sequential(*layers)
            self.add_module(f"qf{i}", self.q_networks[i])


class LayerNormSACPolicy(MultiInputPolicy):
    """SB3's SAC ``MultiInputPolicy`` with :class:`LayerNormCritic` critics."""

    def make_critic(self, features_extractor: Any = None) -> ContinuousCritic:
        """The critics (and their target copy) with LayerNorm."""
        critic_kwargs = self._update_features_extractor(self.critic_kwargs, features_extractor)
        return LayerNormCritic(**critic_kwargs).to(self.device)


class DemoReplayBuffer(DictReplayBuffer):
    """SB3's dict replay buffer that keeps its demonstrations' share of every batch fixed.

    Its first ``demo_rows`` rows (the demonstrations) make up ``demo_ratio`` of every batch,
    however many of the agent's own transitions follow them. :class:`WarmupSAC` sets
    ``demo_rows`` as its warm-up fills the buffer. Until the agent has transitions of its own,
    or once the ring wraps over the demonstrations, batches are uniform.
    """

    def __init__(self, *args: Any, demo_ratio: float = 0.5, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        if not 0.0 <= demo_ratio < 1.0:
            raise ValueError(f"demo_ratio must be in [0, 1), got {demo_ratio}")
        if self.optimize_memory_usage:
            raise ValueError("DemoReplayBuffer does not support optimize_memory_usage")
        self.demo_ratio = demo_ratio
        self.demo_rows = 0

    def sample(self, batch_size: int, env: Any = None) -> Any:
        """``round(batch_size * demo_ratio)`` demonstration rows, the rest the agent's own."""
        if self.full or not 0 < self.demo_rows < self.pos or self.demo_ratio == 0:
            return super().sample(batch_size, env=env)
        n_demo = round(batch_size * self.demo_ratio)
        rows = np.concatenate([np.random.randint(0, self.demo_rows, size=n_demo),
                               np.random.randint(self.demo_rows, self.pos,
                                                 size=batch_size - n_demo)])
        return self._get_samples(rows, env=env)


class TunedSAC(SAC):
    """SB3 SAC with two knobs of this project's recipe.

    It fits its :class:`StandardizedState` extractors (if any) when it first learns, on the
    replay buffer as it stands then (the warm-up transitions), and its actor learns at
    ``actor_lr_scale`` times SAC's learning rate (the critics at 1x).
    """

    def __init__(self, *args: Any, actor_lr_scale: float = 1.0, **kwargs: Any) -> None:
        if actor_lr_scale <= 0:
            raise ValueError(f"actor_lr_scale must be positive, got {actor_lr_scale}")
        self.actor_lr_scale = actor_lr_scale
        super().__init__(*args, **kwargs)

    def _update_learning_rate(self, optimizers: Any) -> None:
        super()._update_learning_rate(optimizers)
        for group in self.actor.optimizer.param_groups:
            group["lr"] = self.lr_schedule(self._current_progress_remaining) * self.actor_lr_scale

    def train(self, gradient_steps: int, batch_size: int = 64) -> None:
        self._fit_state_features()
        super().train(gradient_steps, batch_size)

    def _fit_state_features(self) -> None:
        extractors = [m for m in (self.actor.features_extractor, self.critic.features_extractor,
                                  self.critic_target.features_extractor)
                      if isinstance(m, StandardizedState) and not m.fitted]
        if extractors:
            buffer = self.replay_buffer
            rows = buffer.buffer_size if buffer.full else buffer.pos
            for m in extractors:
                m.fit(buffer.observations["state"][:rows])


class WarmupSAC(TunedSAC):
    """SB3 SAC whose warm-up actions come from per-env copies of a policy, not uniform noise.

    SB3 samples uniform random actions while ``num_timesteps < learning_starts``; here the
    policies act instead (each env's copy is reseeded when its episode ends), and the agent learns
    from their transitions like from any others. With ``bc_steps`` the actor first clones them,
    and the critics then learn its value for ``bc_steps`` gradient steps before the actor moves
    (an untrained critic would otherwise pull the cloned actor anywhere). With ``bc_ratio`` the
    cloning goes on beside SAC's updates, filtered by the critics. Saved models load with plain
    ``SAC.load``.

    Args:
        *args: SAC's (policy, env).
        warmup_policy: A :func:`wmgym.policies.make_policy` name, e.g. ``pick:noise=0.3``.
        bc_steps: Cloning steps when learning starts, then as many critic-only gradient steps.
        bc_ratio: Cloning steps per SAC gradient step after that.
        bc_filter: Q-filter those cloning steps (else clone every sampled demonstration).
        **kwargs: :class:`TunedSAC`'s keyword arguments.
    """

    def __init__(self, *args: Any, warmup_policy: str, bc_steps: int = 0, bc_ratio: float = 0.0,
                 bc_filter: bool = True, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.bc_filter = bc_filter
        if (bc_steps or bc_ratio) and self.learning_starts < 1:
            raise ValueError("cloning needs warm-up steps to clone: set learning_starts >= 1")
        self.warmup_policy, self.bc_steps, self.bc_ratio = warmup_policy, bc_steps, bc_ratio
        self.warmup_seed = (self.seed or 0) * 100_003
        self.warmup: list[Policy] = [make_policy(warmup_policy) for _ in range(self.n_envs)]
        for i, policy in enumerate(self.warmup):
            policy.reset(seed=self.warmup_seed + i)
        self._warmup_episodes = len(self.warmup)
        self._critic_only = bc_steps  # gradient steps left with the actor held fixed
        self._demo_rows = 0  # replay-buffer rows written in the warm-up: the demonstrations
        self._demonstrating = False  # the last action came from the warm-up policies
        self._bc_debt = 0.0
        self.bc_loss: float | None = None
        self.bc_optimizer: torch.optim.Optimizer | None = None

    def train(self, gradient_steps: int, batch_size: int = 64) -> None:
        self._fit_state_features()  # before any cloning step
        if self.bc_optimizer is None and (self.bc_steps or self.bc_ratio):
            self.bc_optimizer = torch.optim.Adam(self.actor.parameters(), lr=BC_LEARNING_RATE)
            if self.bc_steps:
                self.bc_loss = self._clone(self.bc_steps, batch_size, q_filter=False)
        steps = min(gradient_steps, self._critic_only)
        if steps:
            self.actor.requires_grad_(False)  # the actor's loss still backpropagates to nothing
            try:
                super().train(steps, batch_size)
            finally:
                self.actor.requires_grad_(True)
            self._critic_only -= steps
        if gradient_steps > steps:
            super().train(gradient_steps - steps, batch_size)
            self._bc_debt += self.bc_ratio * (gradient_steps - steps)
            if self._bc_debt >= 1:
                self.bc_loss = self._clone(int(self._bc_debt), batch_size,
                                           q_filter=self.bc_filter)
                self._bc_debt -= int(self._bc_debt)
        if self.bc_loss is not None:
            self.logger.record("train/bc_loss", self.bc_loss)

    def _clone(self, steps: int, batch_size: int, q_filter: bool) -> float:
        """Behaviour-cloning steps on warm-up transitions: maximum likelihood of their actions.

        With ``q_filter`` only where the critics value the demonstrated action above the actor's
        own (Nair et al., 2018): the actor is pulled toward the demonstrations only where they
        are still better. Returns the last loss.
        """
        assert self.bc_optimizer is not None
        self.policy.set_training_mode(True)
        loss = torch.zeros(())
        for _ in range(steps):
            rows = np.random.randint(0, self._demo_rows, size=batch_size)
            data = self.replay_buffer._get_samples(rows, env=self._vec_normalize_env)
            mean, log_std, _ = self.actor.get_action_dist_params(data.observations)
            dist = self.actor.action_dist.proba_distribution(mean, log_std)
            # squashed Gaussian: saturated demo actions (|a| = 1) would need an infinite mean
            nll = -dist.log_prob(data.actions.clamp(-BC_ACTION_LIMIT, BC_ACTION_LIMIT))
            if q_filter:
                with torch.no_grad():
                    own, _ = self.actor.action_log_prob(data.observations)
                    q_demo = torch.cat(self.critic(data.observations, data.actions), 1).min(1)[0]
                    q_own = torch.cat(self.critic(data.observations, own), 1).min(1)[0]
                    keep = (q_demo > q_own).float()
                if not keep.any():  # nothing to imitate: no step (Adam's momentum would move)
                    loss = torch.zeros(())
                    continue
                loss = (keep * nll).sum() / keep.sum()
            else:
                loss = nll.mean()
            self.bc_optimizer.zero_grad()
            loss.backward()
            self.bc_optimizer.step()
        return float(loss.detach())

    def _sample_action(self, learning_starts: int, action_noise: Any = None, n_envs: int = 1
                       ) -> tuple[np.ndarray, np.ndarray]:
        self._demonstrating = self.num_timesteps < learning_starts
        if not self._demonstrating:
            return super()._sample_action(learning_starts, action_noise, n_envs)
        obs = self._last_obs
        action = act_each(self.warmup, obs)
        return action, self.policy.scale_action(action)

    def _store_transition(self, replay_buffer: Any, buffer_action: np.ndarray, new_obs: Any,
                          reward: np.ndarray, dones: np.ndarray, infos: list[dict[str, Any]]
                          ) -> None:
        super()._store_transition(replay_buffer, buffer_action, new_obs, reward, dones, infos)
        self._count_demonstrations(int(self._demonstrating))
        for i in np.flatnonzero(dones):
            self.warmup[i].reset(seed=self.warmup_seed + self._warmup_episodes)
            self._warmup_episodes += 1

    def add_demonstrations(self, obs: dict[str, np.ndarray], actions: np.ndarray,
                           new_obs: dict[str, np.ndarray], rewards: np.ndarray,
                           dones: np.ndarray, infos: list[dict[str, Any]], n: int | None = None
                           ) -> None:
        """Writes warm-up transitions made elsewhere (e.g. imagined) as demonstrations.

        One SB3 ``VecEnv`` step of any number of sub-envs (a leading batch axis; ``new_obs`` is
        the next episode's first observation where ``dones``, the last one is in
        ``infos[i]["terminal_observation"]``); only its first ``n`` sub-envs if given. They are
        cloned, kept at ``demo_ratio`` of every batch and standardised over like the agent's own
        warm-up. Call before the agent learns; its own env must have one sub-env.

        Raises:
            ValueError: The agent's replay buffer is filled by more than one sub-env.
        """
        buffer = self._real_buffer
        if buffer.n_envs != 1:
            raise ValueError(f"add_demonstrations needs an agent with 1 env, not {buffer.n_envs}")
        n = len(actions) if n is None else n
        scaled = self.policy.scale_action(np.asarray(actions, dtype=np.float32))
        for i in range(n):
            last = infos[i].get("terminal_observation") if dones[i] else None
            nxt = {k: v[i] for k, v in new_obs.items()} if last is None else last
            buffer.add({k: v[i : i + 1] for k, v in obs.items()},
                       {k: np.asarray(nxt[k])[None] for k in obs}, scaled[i : i + 1],
                       np.asarray(rewards[i : i + 1]), np.asarray(dones[i : i + 1]), [infos[i]])
        self._count_demonstrations(n)

    @property
    def _real_buffer(self) -> Any:
        """The replay buffer of real (and demonstrated) transitions, under MBPO's mixing too."""
        return getattr(self.replay_buffer, "real", self.replay_buffer)

    def _count_demonstrations(self, n: int) -> None:
        """``n`` more demonstration rows; a :class:`DemoReplayBuffer` learns where they end."""
        self._demo_rows += n
        if isinstance(self._real_buffer, DemoReplayBuffer):
            self._real_buffer.demo_rows = self._demo_rows

    def _excluded_save_params(self) -> list[str]:
        return [*super()._excluded_save_params(), "warmup", "bc_optimizer"]


def act_each(policies: list[Policy], obs: dict[str, np.ndarray]) -> np.ndarray:
    """Actions ``(N, A)`` of ``N`` policies, policy ``i`` on sub-env ``i`` of batched ``obs``."""
    return np.stack([p({k: v[i] for k, v in obs.items()}) for i, p in enumerate(policies)])


def ent_coef_value(text: str) -> str | float:
    """SAC's ``ent_coef`` from a command-line string: ``auto``/``auto_<init>`` or a number."""
    if text.startswith("auto"):
        return text
    try:
        return float(text)
    except ValueError:
        raise ValueError(f"ent_coef must be 'auto', 'auto_<init>' or a number, got {text!r}"
                         ) from None


def make_sac(env: VecEnv, warmup_policy: str | None = None, bc_steps: int = 0,
             bc_ratio: float = 0.0, bc_filter: bool = True, actor_lr_scale: float = 1.0,
             demo_ratio: float = 0.0, standardize_state: bool = False,
             critic_layer_norm: bool = False, **kwargs: Any) -> SAC:
    """An SB3 SAC (``MultiInputPolicy``) on ``env``; ``warmup_policy`` acts in its warm-up.

    Args:
        env: The training env (dict observations with ``state``).
        warmup_policy: A :func:`wmgym.policies.make_policy` name (e.g. ``pick:noise=0.3``) that
            replaces SAC's uniform random warm-up actions; ``None`` keeps SB3's behaviour.
        bc_steps: Behaviour-cloning steps (then as many critic-only steps) when learning starts.
        bc_ratio: Cloning steps per SAC gradient step afterwards (0: none).
        bc_filter: Q-filter those steps (Nair et al., 2018); else clone every sampled demo.
        actor_lr_scale: The actor's learning rate over SAC's (:class:`TunedSAC`).
        demo_ratio: Share of every batch drawn from the warm-up transitions
            (:class:`DemoReplayBuffer`); 0 = SB3's uniform replay.
        standardize_state: Standardised state features (:class:`StandardizedState`).
        critic_layer_norm: Critics with LayerNorm (:class:`LayerNormSACPolicy`).
        **kwargs: Passed on to :class:`stable_baselines3.SAC` (``seed``, ``learning_starts`` …).
    """
    policy = LayerNormSACPolicy if critic_layer_norm else "MultiInputPolicy"
    if standardize_state:
        kwargs["policy_kwargs"] = {**kwargs.get("policy_kwargs", {}),
                                   "features_extractor_class": StandardizedState}
    if warmup_policy is None:
        if bc_steps or bc_ratio or demo_ratio:
            raise ValueError("cloning (bc_steps, bc_ratio) and demo_ratio need a warmup_policy "
                             "whose transitions they use")
        return TunedSAC(policy, env, actor_lr_scale=actor_lr_scale, **kwargs)
    if demo_ratio:
        kwargs.update(replay_buffer_class=DemoReplayBuffer,
                      replay_buffer_kwargs={"demo_ratio": demo_ratio})
    return WarmupSAC(policy, env, warmup_policy=warmup_policy, bc_steps=bc_steps,
                     bc_ratio=bc_ratio, bc_filter=bc_filter, actor_lr_scale=actor_lr_scale,
                     **kwargs)
