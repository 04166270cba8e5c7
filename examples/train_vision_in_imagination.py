"""A camera-based agent trained only in imagination, then run in robosuite.

    python examples/train_vision_in_imagination.py                    # 12,000 imagined steps
    python examples/train_vision_in_imagination.py --steps 48 --train-steps 2 --episodes 1

The actor sees what a real robot sees: the camera's rgb, depth and robot mask, and its own end
effector and fingers (``proprio``), never the cube's position. It learns by imitation inside
``WM-Pick-v0``: the task's scripted expert reads the imagined ``state`` and labels every
imagined step (DART first, then DAgger rounds where the actor drives). No robosuite step is
taken until the frozen actor is checked in ``Sim-Pick-v0``, with cameras.
``wmgym transfer --algo imitate`` runs the full comparison against the same recipe trained in
robosuite.
"""

from dataclasses import dataclass
from pathlib import Path

import gymnasium as gym
import numpy as np
import tyro

import wmgym  # noqa: F401  (registers the envs)
from wmgym.agents import load_agent, write_agent
from wmgym.imitation import ImitateArgs, imitate


@dataclass
class Args:
    task: str = "pick"
    """Task name."""
    steps: int = 12_000
    """Imagined steps in all rounds."""
    rounds: int = 3
    """Round 0 is DART, the others DAgger."""
    train_steps: int = 1500
    """The actor's gradient steps after each round."""
    num_envs: int = 16
    """Imagined episodes run side by side."""
    episodes: int = 10
    """Real episodes that check the actor in robosuite."""
    checkpoint: str = ""
    """World-model checkpoint (default: the task's shipped one)."""
    out: str = "runs/vision_example"
    """Where the frozen actor is written."""


if __name__ == "__main__":
    args = tyro.cli(Args)
    actor, report = imitate(ImitateArgs(
        task=args.task, checkpoint=args.checkpoint, twin="wm", steps=args.steps,
        rounds=args.rounds, train_steps=args.train_steps, num_envs=args.num_envs, fast="fast",
        eval_episodes=0))
    tensors, architecture = actor.export()
    folder = write_agent(Path(args.out) / "agent", tensors, architecture, task=args.task,
                         name="vision-example", training=report)
    agent = load_agent(folder)  # a policy: obs -> action, reading only agent.observation_keys
    print(f"frozen actor in {folder}, reads {list(agent.observation_keys)}")

    env = gym.make(f"Sim-{report['task']}-v0")  # robosuite, with the camera
    successes = []
    for episode in range(args.episodes):
        obs, _ = env.reset(seed=400_000 + episode)
        done, success = False, False
        while not done:
            obs, _, terminated, truncated, info = env.step(agent(obs))
            success |= bool(info["success"])
            done = terminated or truncated
        successes.append(success)
    env.close()
    print(f"real success {np.mean(successes):.2f} over {args.episodes} robosuite episodes")
