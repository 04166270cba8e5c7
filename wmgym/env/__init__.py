"""The Gymnasium layer of the learned twin: ``WM-<Task>-v0`` as a single, vector and SB3 env.

* :class:`WorldModelEnv` — ``gym.make("WM-Pick-v0")``, a ``gymnasium.Env``.
* :class:`WorldModelVectorEnv` — ``gym.make_vec("WM-Pick-v0", num_envs=N)``, one batched model
  call per step for all ``N`` sub-envs.
* :class:`SB3VecEnv` / :func:`make_sb3_env` — the vector env as a stable-baselines3 ``VecEnv``.

Both Gymnasium envs are shells around one :class:`~wmgym.env.core.Imagination` core, and the
weights load once per process (:func:`~wmgym.env.loading.load_checkpoint`).
"""

from __future__ import annotations

from typing import Any

from wmgym.env.loading import LoadedCheckpoint, clear_cache, load_checkpoint
from wmgym.env.vector_env import WorldModelVectorEnv
from wmgym.env.world_model_env import WorldModelEnv

__all__ = [
    "LoadedCheckpoint",
    "SB3VecEnv",
    "WorldModelEnv",
    "WorldModelVectorEnv",
    "clear_cache",
    "load_checkpoint",
    "make_sb3_env",
]


def __getattr__(name: str) -> Any:
    # stable-baselines3 is imported only by those who use the adapter
    if name in ("SB3VecEnv", "make_sb3_env"):
        from wmgym.env import sb3

        return getattr(sb3, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
