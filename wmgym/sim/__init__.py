"""The real twin: robosuite tasks behind the shared spaces."""

from wmgym.sim.pick_env import SimEnv

__all__ = ["SimEnv"]
