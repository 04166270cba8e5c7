"""SB3's SAC with the pieces the RL uses measured: a scripted warm-up and what it feeds.

:func:`make_sac` builds it: a scripted warm-up policy instead of uniform noise
(:class:`WarmupSAC`), its demonstrations cloned into the actor and kept at a fixed share of
every batch (:class:`DemoReplayBuffer`), standardised state features with the task's objects
relative to the end effector (:class:`StandardizedState`), LayerNorm critics and a slower actor
(:class:`TunedSAC`). Saved agents load with plain ``SAC.load``.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
from gymnasium import spaces
from stable_baselines3 import SAC
from stable_baselines3.common.buffers import DictReplayBuffer
from stable_baselines3.common.policies import ContinuousCritic
from stable_baselines3.common.torch_layers import BaseFeaturesExtractor
from stable_baselines3.common.vec_env import VecEnv
from stable_baselines3.sac.policies import MultiInputPolicy

from wmgym.policies import Policy, make_policy
from wmgym.spec import TaskSpec, load_spec

#: Demo actions are clipped to this magnitude for behaviour cloning through the tanh squashing.
BC_ACTION_LIMIT = 0.97
#: Adam's learning rate for behaviour cloning (SAC's own optimizers are left untouched).
BC_LEARNING_RATE = 1e-3


def position_offsets(task: str | TaskSpec) -> tuple[tuple[tuple[int, ...], tuple[int, ...]], ...]:
    """``(from, to)`` state indices of each named position relative to the first one.

    The spec's first named position is the end effector's; for Pick this is the cube relative
    to the gripper (robosuite's own ``gripper_to_cube_pos`` observation).
    """
    positions = list(load_spec(task).positions.values())
    return tuple((tuple(positions[0]), tuple(p)) for p in positions[1:])


class StandardizedState(BaseFeaturesExtractor):
    """Features of a state-only observation: ``(state - mean) / std`` and relative positions.

    The raw state is in metres, its informative differences (a centimetre to an object, a few
    millimetres of finger travel) tiny beside the table height, which an MLP fed raw state barely
    resolves. The statistics are fitted once (:meth:`fit`, from the warm-up transitions) and saved
    with the policy, so a loaded agent sees the features it was trained on.

    Args:
        observation_space: A ``Dict`` holding ``state`` alone.
        offsets: ``(from, to)`` state indices: each adds the features ``(state[to] -
            state[from]) / std`` (:func:`position_offsets` gives a task's).

    Raises:
        ValueError: Observations other than ``state``.
    """

    def __init__(self, observation_space: spaces.Dict,
                 offsets: Sequence[tuple[Sequence[int], Sequence[int]]] = ()) -> None:
        if set(observation_space.spaces) != {"state"}:
            raise ValueError("StandardizedState takes state-only observations, got keys "
                             f"{sorted(observation_space.spaces)}")
        n = observation_space["state"].shape[0]
        self.offsets = [(list(a), list(b)) for a, b in offsets]
        m = sum(len(b) for _, b in self.offsets)
        super().__init__(observation_space, features_dim=n + m)
        self.register_buffer("mean", torch.zeros(n))
        self.register_buffer("std", torch.ones(n))
        self.register_buffer("relative_std", torch.ones(m))
        self.register_buffer("fitted", torch.zeros((), dtype=torch.bool))

    def _relative(self, state: torch.Tensor) -> torch.Tensor:
        parts = [state[..., b] - state[..., a] for a, b in self.offsets]
        return torch.cat(parts, dim=-1) if parts else state[..., :0]

    def fit(self, states: np.ndarray) -> None:
        """Sets the statistics from ``states`` ``(N, n)``."""
        x = torch.as_tensor(np.asarray(states, np.float32).reshape(-1, self.mean.numel()))
        self.mean.copy_(x.mean(0))
        self.std.copy_(x.std(0).clamp_min(1e-3))  # a field that never moved stays finite
        if self.relative_std.numel():
            self.relative_std.copy_(self._relative(x).std(0).clamp_min(1e-3))
        self.fitted.fill_(True)

    def forward(self, observations: dict[str, torch.Tensor]) -> torch.Tensor:
        """``(state - mean) / std`` and the scaled offsets, ``(..., features_dim)``."""
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
        """SAC's updates, the state features fitted first (once)."""
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
        task: The task (``random`` warm-up policies take their action size from it); default:
            the env's.
        bc_steps: Cloning steps when learning starts, then as many critic-only gradient steps.
        bc_ratio: Cloning steps per SAC gradient step after that.
        bc_filter: Q-filter those cloning steps (else clone every sampled demonstration).
        **kwargs: :class:`TunedSAC`'s keyword arguments.
    """

    def __init__(self, *args: Any, warmup_policy: str, task: str | TaskSpec | None = None,
                 bc_steps: int = 0, bc_ratio: float = 0.0, bc_filter: bool = True,
                 **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.bc_filter = bc_filter
        if (bc_steps or bc_ratio) and self.learning_starts < 1:
            raise ValueError("cloning needs warm-up steps to clone: set learning_starts >= 1")
        self.warmup_policy, self.bc_steps, self.bc_ratio = warmup_policy, bc_steps, bc_ratio
        self.warmup_seed = (self.seed or 0) * 100_003
        if task is None:
            from wmgym.rl import task_of

            task = task_of(self.env)
        self.warmup: list[Policy] = [make_policy(warmup_policy, task=task)
                                     for _ in range(self.n_envs)]
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
        """Cloning when learning starts, critic-only steps, then SAC with cloning beside."""
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


def make_sac(env: VecEnv, *, task: str | TaskSpec | None = None,
             warmup_policy: str | None = None, bc_steps: int = 0, bc_ratio: float = 0.0,
             bc_filter: bool = True, actor_lr_scale: float = 1.0, demo_ratio: float = 0.0,
             standardize_state: bool = False, critic_layer_norm: bool = False,
             **kwargs: Any) -> SAC:
    """An SB3 SAC (``MultiInputPolicy``) on ``env``; ``warmup_policy`` acts in its warm-up.

    >>> env = make_sb3_env("WM-Pick-v0", num_envs=16, keys=["state"])  # doctest: +SKIP
    >>> agent = make_sac(env, **sac_recipe("pick"), gradient_steps=16)  # doctest: +SKIP

    Args:
        env: The training env (dict observations with ``state``).
        task: The task, for the state features and random warm-up policies; default: the env's
            (:func:`wmgym.rl.task_of`).
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
        if task is None:
            from wmgym.rl import task_of

            task = task_of(env)
        offsets = position_offsets(task)
        kwargs["policy_kwargs"] = {**kwargs.get("policy_kwargs", {}),
                                   "features_extractor_class": StandardizedState,
                                   "features_extractor_kwargs": {"offsets": offsets}}
    if warmup_policy is None:
        if bc_steps or bc_ratio or demo_ratio:
            raise ValueError("cloning (bc_steps, bc_ratio) and demo_ratio need a warmup_policy "
                             "whose transitions they use")
        return TunedSAC(policy, env, actor_lr_scale=actor_lr_scale, **kwargs)
    if demo_ratio:
        kwargs.update(replay_buffer_class=DemoReplayBuffer,
                      replay_buffer_kwargs={"demo_ratio": demo_ratio})
    return WarmupSAC(policy, env, warmup_policy=warmup_policy, task=task, bc_steps=bc_steps,
                     bc_ratio=bc_ratio, bc_filter=bc_filter, actor_lr_scale=actor_lr_scale,
                     **kwargs)
