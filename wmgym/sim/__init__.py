"""The real twin: ``Sim-<Task>-v0``, robosuite behind the task spec's spaces and camera."""

from wmgym.sim.env import SimEnv

__all__ = ["SimEnv"]
