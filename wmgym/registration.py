"""Registers both twins of every task spec with Gymnasium."""

from __future__ import annotations

from typing import Any

import gymnasium as gym

from wmgym.spec import TaskSpec, all_specs, spec_paths


def register_all() -> list[str]:
    """Registers ``Sim-<Task>-v0`` and ``WM-<Task>-v0`` for every spec; returns the ids.

    Specs come from every data root (:mod:`wmgym.paths`). ``WM-<Task>-v0`` is registered
    whether or not its checkpoint exists yet: making it without one fails with the checkpoint's
    path (pass ``checkpoint=<dir>`` to use another). Its
    ``vector_entry_point`` is the native batched env, so ``gym.make_vec`` steps all sub-envs
    with one model call.
    """
    return [env_id for spec in all_specs() for env_id in register_spec(spec, in_roots=True)]


def register_spec(spec: TaskSpec, *, in_roots: bool | None = None) -> list[str]:
    """Registers both twins of one spec (unless registered already); returns their ids.

    A spec outside the data roots (a TOML path) is registered by its path; ``in_roots`` says
    which it is when the caller knows (None: look it up).
    """
    known = in_roots if in_roots is not None else (
        spec_paths().get(spec.name.lower()) == spec.path)
    kwargs = {"task": spec.name if known else str(spec.path)}
    if spec.sim_id not in gym.registry:
        gym.register(spec.sim_id, entry_point="wmgym.sim.env:SimEnv",
                     max_episode_steps=spec.max_episode_steps, kwargs=kwargs)
    if spec.wm_id not in gym.registry:
        gym.register(spec.wm_id, entry_point="wmgym.env.world_model_env:WorldModelEnv",
                     vector_entry_point="wmgym.env.vector_env:WorldModelVectorEnv",
                     max_episode_steps=spec.max_episode_steps, kwargs=kwargs)
    return [spec.sim_id, spec.wm_id]


def make_env(env_id: str, **kwargs: Any):
    """``gym.make(env_id, **kwargs)`` after registering wmgym's envs (for spawned workers)."""
    import wmgym  # noqa: F401

    return gym.make(env_id, **kwargs)
