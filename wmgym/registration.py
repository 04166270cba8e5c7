"""Registers both twins of every task spec with Gymnasium."""

from __future__ import annotations

import gymnasium as gym

from wmgym.spec import all_specs


def register_all() -> list[str]:
    """Registers ``Sim-<Task>-v0`` for every spec; returns the ids registered."""
    ids = []
    for spec in all_specs():
        if spec.sim_id not in gym.registry:
            gym.register(
                spec.sim_id,
                entry_point="wmgym.sim.pick_env:SimEnv",
                max_episode_steps=spec.max_episode_steps,
                kwargs={"spec": spec.name},
            )
        ids.append(spec.sim_id)
    return ids
