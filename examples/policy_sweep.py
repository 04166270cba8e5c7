"""Rank a few pick policies in the learned twin and in the real one, and compare the rankings.

    python examples/policy_sweep.py --episodes 20               # the shipped WM-Pick-v0
    python examples/policy_sweep.py --episodes 2 --max-steps 20 --checkpoint path/to/checkpoint

Writes out/policy_sweep/sweep.json and sweep.png (real vs imagined success per policy).
"""

import argparse

import numpy as np

from wmgym.policies import ScriptedPick
from wmgym.sweep import SweepArgs, sweep_main


class Hesitant:
    """A policy with memory: holds still for 15 steps, then picks (one instance per episode)."""

    observation_keys = ("state",)  # reads state only: the sweep can skip camera observations

    def __init__(self) -> None:
        self.pick = ScriptedPick(error=0.01)

    def reset(self, seed: int | None = None) -> None:
        self.pick.reset(seed)
        self.t = 0

    def __call__(self, obs: dict[str, np.ndarray]) -> np.ndarray:
        self.t += 1
        return np.zeros(4, np.float32) if self.t <= 15 else self.pick(obs)


def reach_only(obs: dict[str, np.ndarray]) -> np.ndarray:
    """A plain function: moves the open gripper onto the cube and never closes it."""
    eef, cube = obs["state"][:3], obs["state"][5:8]
    return np.r_[np.clip(12.0 * (cube - eef), -1.0, 1.0), -1.0].astype(np.float32)


reach_only.observation_keys = ("state",)  # a function declares it as an attribute


POLICIES = {
    "careful": "pick",  # a name for wmgym.policies.make_policy
    "sloppy": "pick:error=0.03",
    "shaky": "pick:noise=0.6",
    "hesitant": Hesitant,  # a class: one instance per episode
    "reach only": reach_only,  # a function
    "random": "random",
}

if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--episodes", type=int, default=20)
    parser.add_argument("--max-steps", type=int, default=0, help="0 = the task's episode length")
    parser.add_argument("--checkpoint", default="", help="default: the shipped WM-Pick-v0")
    parser.add_argument("--device", default="auto")
    parser.add_argument("--out", default="out/policy_sweep")
    cli = parser.parse_args()
    args = SweepArgs(
        episodes=cli.episodes,
        max_steps=cli.max_steps,
        checkpoint=cli.checkpoint,
        device=cli.device,
        out=cli.out,
    )
    result = sweep_main(args, POLICIES)
    print(f"MMRV {result['metrics']['success']['mmrv']} (0 = the twins rank every pair alike)")
    print(f"camera observations rendered: {result['images']} (every policy here reads state only)")
