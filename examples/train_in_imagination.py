"""Train SAC purely inside the learned twin, then check it in the real one.

    python examples/train_in_imagination.py --steps 20000          # the shipped WM-Pick-v0
    python examples/train_in_imagination.py --steps 200 --checkpoint path/to/checkpoint

The agent sees the 8-d state (the CPU default); the world model imagines it without decoding
frames. The agent is ``wmgym.rl.PICK_RECIPE``, the one of ``benchmarks/transfer.json``: SAC
whose warm-up steps are a scripted pick (imagined), cloned and kept in every batch, with
standardised state features (plain SAC lifts nothing in 40k steps). ``wmgym transfer`` runs the
full comparison (also training in Sim, learning curves).
"""

import argparse

import gymnasium as gym

import wmgym  # noqa: F401  (registers Sim-Pick-v0 and WM-Pick-v0)
from wmgym.env.sb3 import make_sb3_env
from wmgym.policy_sources import SB3Policy
from wmgym.rl import PICK_RECIPE, make_sac

if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=20_000)
    parser.add_argument("--episodes", type=int, default=20, help="real evaluation episodes")
    parser.add_argument("--checkpoint", default=None, help="default: the shipped WM-Pick-v0")
    cli = parser.parse_args()

    # 16 imagined episodes per model call; state only; episodes run on after a lift
    wm = make_sb3_env("WM-Pick-v0", num_envs=16, seed=0, keys=["state"], images=False,
                      terminate_on_success=False,
                      **({"checkpoint": cli.checkpoint} if cli.checkpoint else {}))
    warmup = min(5000, cli.steps // 2)
    recipe = {**PICK_RECIPE, "bc_steps": warmup, "learning_starts": warmup}
    agent = make_sac(wm, **recipe, gradient_steps=16, seed=0)  # one update per imagined step
    agent.learn(cli.steps, progress_bar=True)

    real = gym.make("Sim-Pick-v0", images=False)  # same spaces, robosuite underneath
    policy, successes = SB3Policy(agent), 0
    for seed in range(cli.episodes):
        obs, _ = real.reset(seed=10_000 + seed)
        done, success = False, False
        while not done:
            obs, _, terminated, truncated, info = real.step(policy(obs))
            success |= info["success"]
            done = terminated or truncated
        successes += success
    print(f"real success after {cli.steps} imagined steps: {successes}/{cli.episodes}")
