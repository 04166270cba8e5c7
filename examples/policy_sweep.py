"""Rank a few pick policies in the learned twin and in the real one, and compare the rankings.

    python examples/policy_sweep.py --episodes 20               # the shipped WM-Pick-v0
    python examples/policy_sweep.py --episodes 2 --max-steps 20 --checkpoint path/to/checkpoint

Writes runs/policy_sweep/sweep.json and sweep.png (real vs imagined success per policy).
"""

from dataclasses import dataclass

import numpy as np
import tyro

from wmgym.spec import load_spec
from wmgym.sweep import SweepArgs, sweep_main
from wmgym.tasks.pick import ScriptedPick

PICK = load_spec("pick")
EEF, CUBE = list(PICK.positions["eef"]), list(PICK.positions["cube"])


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
        return np.zeros(PICK.action_dim, np.float32) if self.t <= 15 else self.pick(obs)


def reach_only(obs: dict[str, np.ndarray]) -> np.ndarray:
    """A plain function: moves the open gripper onto the cube and never closes it."""
    eef, cube = obs["state"][EEF], obs["state"][CUBE]
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


@dataclass
class Args:
    episodes: int = 20
    """Episodes per policy and twin."""
    max_steps: int = 0
    """Truncate episodes after this many steps (0: the task's episode length)."""
    checkpoint: str = ""
    """World-model checkpoint (default: the shipped WM-Pick-v0)."""
    device: str = "auto"
    """Device of the world model."""
    out: str = "runs/policy_sweep"
    """Where sweep.json and sweep.png go."""


if __name__ == "__main__":
    args = tyro.cli(Args)
    sweep = SweepArgs(task="pick", episodes=args.episodes, max_steps=args.max_steps,
                      checkpoint=args.checkpoint, device=args.device, out=args.out)
    result = sweep_main(sweep, POLICIES)
    print(f"MMRV {result['metrics']['success']['mmrv']} (0 = the twins rank every pair alike)")
    print(f"camera observations rendered: {result['images']} (every policy here reads state only)")
