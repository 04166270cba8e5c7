"""Train SAC purely inside the learned twin, then check it in the real one.

    python examples/train_in_imagination.py --steps 20000          # the shipped WM-Pick-v0
    python examples/train_in_imagination.py --steps 200 --episodes 1 --checkpoint path/to/ckpt

The agent sees the state vector (the CPU default); the world model imagines it without decoding
frames. The agent is the task's measured SAC recipe (``wmgym.rl.sac_recipe``): SAC whose warm-up
steps are a scripted expert (imagined), cloned and kept in every batch, with standardised state
features. ``wmgym transfer`` runs the full comparison (also training in Sim, learning curves).
"""

from dataclasses import dataclass

import gymnasium as gym
import tyro

import wmgym  # noqa: F401  (registers Sim-<Task>-v0 and WM-<Task>-v0)
from wmgym.env.sb3 import make_sb3_env
from wmgym.policy_sources import SB3Policy
from wmgym.rl import sac_recipe
from wmgym.sac import make_sac
from wmgym.spec import load_spec


@dataclass
class Args:
    task: str = "pick"
    """Task name."""
    steps: int = 20_000
    """Imagined training steps."""
    episodes: int = 20
    """Real evaluation episodes."""
    checkpoint: str | None = None
    """World-model checkpoint (default: the task's shipped one)."""
    device: str = "auto"
    """Device of the world model."""
    seed: int = 0
    """Seed of the agent and the envs."""


if __name__ == "__main__":
    args = tyro.cli(Args)
    spec = load_spec(args.task)
    # 16 imagined episodes per model call; state only; episodes run on after a success
    wm = make_sb3_env(spec.wm_id, num_envs=16, seed=args.seed, keys=["state"], images=False,
                      terminate_on_success=False, checkpoint=args.checkpoint, device=args.device)
    warmup = min(5000, args.steps // 2)
    recipe = {**sac_recipe(spec), "bc_steps": warmup, "learning_starts": warmup}
    agent = make_sac(wm, **recipe, gradient_steps=16, seed=args.seed)  # one update a step
    agent.learn(args.steps, progress_bar=True)

    real = gym.make(spec.sim_id, images=False)  # same spaces, robosuite underneath
    policy, successes = SB3Policy(agent), 0
    for e in range(args.episodes):
        obs, _ = real.reset(seed=10_000 + e)
        done, success = False, False
        while not done:
            obs, _, terminated, truncated, info = real.step(policy(obs))
            success |= info["success"]
            done = terminated or truncated
        successes += success
    print(f"real success after {args.steps} imagined steps: {successes}/{args.episodes}")
