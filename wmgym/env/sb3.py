"""A stable-baselines3 ``VecEnv`` over a Gymnasium vector env (SB3 cannot take one directly).

The adapter keeps the batching of the native ``WorldModelVectorEnv`` (one model call per step)
and translates Gymnasium's vector API to SB3's: ``dones = terminated | truncated``, one info dict
per sub-env with ``terminal_observation`` and ``TimeLimit.truncated`` (and ``is_success`` at the
end of an episode, SB3's success key), reset infos in ``reset_infos``. It works over any vector
env that autoresets in the same step, so ``Sim-<Task>-v0`` (through ``SyncVectorEnv``) and
``WM-<Task>-v0`` plug into SB3 alike.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import gymnasium as gym
import numpy as np
from gymnasium import spaces
from gymnasium.vector import AutoresetMode
from stable_baselines3.common.vec_env import VecEnv, VecMonitor
from stable_baselines3.common.vec_env.base_vec_env import (
    VecEnvIndices,
    VecEnvObs,
    VecEnvStepReturn,
)


class SB3VecEnv(VecEnv):
    """A Gymnasium vector env with ``AutoresetMode.SAME_STEP`` as an SB3 ``VecEnv``.

    >>> import gymnasium as gym, wmgym
    >>> from stable_baselines3 import PPO
    >>> envs = SB3VecEnv(gym.make_vec("WM-Pick-v0", num_envs=4), keys=["state"])
    >>> envs.observation_space
    Dict('state': Box(-5.0, 5.0, (8,), float32))
    >>> model = PPO("MultiInputPolicy", envs).learn(1_000)

    Args:
        venv: The vector env; it must declare ``metadata["autoreset_mode"] = SAME_STEP``.
        keys: Observation keys to keep (e.g. ``["state"]`` for state-only RL, like
            ``FilterObservation``); None keeps them all.

    """

    def __init__(self, venv: gym.vector.VectorEnv, keys: Sequence[str] | None = None) -> None:
        mode = venv.metadata.get("autoreset_mode")
        if mode != AutoresetMode.SAME_STEP:
            raise ValueError(
                f"SB3VecEnv needs a vector env that autoresets in the same step "
                f"(metadata['autoreset_mode'] == AutoresetMode.SAME_STEP), got {mode!r}"
            )
        space = venv.single_observation_space
        if keys is not None:
            if not isinstance(space, spaces.Dict):
                raise ValueError(f"keys= needs a Dict observation space, got {space}")
            unknown = [k for k in keys if k not in space.spaces]
            if unknown or not keys:
                raise ValueError(f"keys {list(keys)} must be a non-empty subset of {list(space)}")
            space = spaces.Dict({k: space[k] for k in keys})
        self.venv = venv
        self.keys = None if keys is None else list(keys)
        self._actions: np.ndarray | None = None
        super().__init__(venv.num_envs, space, venv.single_action_space)

    @property
    def spec(self) -> Any:
        """The vector env's ``EnvSpec`` (what ``VecMonitor`` logs as the env id)."""
        return self.venv.spec

    # ------------------------------------------------------------------ SB3 API
    def reset(self) -> VecEnvObs:
        """Resets all sub-envs with the seeds from ``seed()`` and options from ``set_options``."""
        seed = None if all(s is None for s in self._seeds) else list(self._seeds)
        options = self._options[0] if any(self._options) else None
        if options is not None and any(o.keys() != options.keys() for o in self._options):
            raise ValueError(
                "SB3VecEnv passes one (batched) options dict to the vector env: set the same "
                "options for every sub-env"
            )
        obs, infos = self.venv.reset(seed=seed, options=options)
        self.reset_infos = [_unbatch(infos, i) for i in range(self.num_envs)]
        self._reset_seeds()
        self._reset_options()
        return self._filter(obs)

    def step_async(self, actions: np.ndarray) -> None:
        self._actions = actions

    def step_wait(self) -> VecEnvStepReturn:
        if self._actions is None:
            raise RuntimeError("call step_async(actions) before step_wait()")
        obs, rewards, terminated, truncated, infos = self.venv.step(self._actions)
        self._actions = None
        dones = np.logical_or(terminated, truncated)
        final_obs, final_info = infos.get("final_obs"), infos.get("final_info", {})
        out: list[dict[str, Any]] = []
        for i in range(self.num_envs):
            if dones[i]:
                info = _unbatch(final_info, i)
                info["terminal_observation"] = self._filter(final_obs[i])
                if "success" in info:
                    info["is_success"] = bool(info["success"])
                self.reset_infos[i] = _unbatch(infos, i)
            else:
                info = _unbatch(infos, i)
            info["TimeLimit.truncated"] = bool(truncated[i] and not terminated[i])
            out.append(info)
        return self._filter(obs), np.asarray(rewards, dtype=np.float32), dones, out

    def close(self) -> None:
        self.venv.close()

    def get_images(self) -> Sequence[np.ndarray | None]:
        frames = self.venv.render()
        return [None] * self.num_envs if frames is None else list(frames)

    def get_attr(self, attr_name: str, indices: VecEnvIndices = None) -> list[Any]:
        """The vector env's attribute, once per requested sub-env (they share it)."""
        return [getattr(self.venv, attr_name)] * len(self._get_indices(indices))

    def set_attr(self, attr_name: str, value: Any, indices: VecEnvIndices = None) -> None:
        """Sets the vector env's attribute: all sub-envs at once (they share it)."""
        if len(self._get_indices(indices)) != self.num_envs:
            raise ValueError("sub-envs of a batched env share attributes: set them for all")
        setattr(self.venv, attr_name, value)

    def env_method(
        self,
        method_name: str,
        *method_args: Any,
        indices: VecEnvIndices = None,
        **method_kwargs: Any,
    ) -> list[Any]:
        """Calls the vector env's method once; its result is returned for every index."""
        result = getattr(self.venv, method_name)(*method_args, **method_kwargs)
        return [result] * len(self._get_indices(indices))

    def env_is_wrapped(
        self, wrapper_class: type[gym.Wrapper], indices: VecEnvIndices = None
    ) -> list[bool]:
        return [False] * len(self._get_indices(indices))

    # ------------------------------------------------------------------ internals
    def _filter(self, obs: Any) -> Any:
        if self.keys is None:
            return obs
        return {k: obs[k] for k in self.keys}


def _unbatch(infos: dict[str, Any], i: int) -> dict[str, Any]:
    """Sub-env ``i``'s info from Gymnasium's batched infos (values present per ``_key`` mask)."""
    out: dict[str, Any] = {}
    for key, value in infos.items():
        if key.startswith("_") or key in ("final_obs", "final_info"):
            continue
        mask = infos.get(f"_{key}")
        if mask is not None and not mask[i]:
            continue
        if isinstance(value, dict):
            out[key] = _unbatch(value, i)
        else:
            item = value[i]
            out[key] = item.item() if isinstance(item, np.generic) else item
    return out


def make_sb3_env(
    env_id: str,
    *,
    num_envs: int = 8,
    seed: int | None = 0,
    keys: Sequence[str] | None = None,
    monitor: bool = True,
    **kwargs: Any,
) -> VecEnv:
    """Makes a registered env as an SB3 ``VecEnv``, batched natively where the env can be.

    Envs with a ``vector_entry_point`` (``WM-<Task>-v0``) use it; others (``Sim-<Task>-v0``) run
    in a ``SyncVectorEnv`` that autoresets in the same step.

    >>> from stable_baselines3 import SAC
    >>> env = make_sb3_env("WM-Pick-v0", num_envs=8, keys=["state"])
    >>> model = SAC("MultiInputPolicy", env).learn(1_000)

    Args:
        env_id: A registered env id.
        num_envs: Number of sub-envs.
        seed: Seed of the first reset (sub-env ``i`` gets ``seed + i``); None for random.
        keys: Observation keys to keep, e.g. ``["state"]``; None keeps all.
        monitor: Wrap in ``VecMonitor`` so SB3 logs episode returns and lengths.
        **kwargs: Passed to the env's constructor (``checkpoint=``, ``device=``, …).

    Returns:
        The SB3 ``VecEnv``.
    """
    if gym.spec(env_id).vector_entry_point is not None:
        venv = gym.make_vec(
            env_id, num_envs=num_envs, vectorization_mode="vector_entry_point", **kwargs
        )
    else:
        venv = gym.make_vec(
            env_id,
            num_envs=num_envs,
            vectorization_mode="sync",
            vector_kwargs={"autoreset_mode": AutoresetMode.SAME_STEP},
            **kwargs,
        )
    env: VecEnv = SB3VecEnv(venv, keys)
    if seed is not None:
        env.seed(seed)
    return VecMonitor(env) if monitor else env
