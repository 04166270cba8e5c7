"""Session-16 probe: how good is the clone of a warm-up, imagined or real? (numbers: README, MBPO).

    python scripts/clone_probe.py imagined 5000 5000 0    # N imagined demos, BC steps, seed
    python scripts/clone_probe.py real 5000 5000 0 0.002  # N real demos, BC steps, seed[, noise m]
    python scripts/clone_probe.py stats 0                 # 5,000 real vs 5,000 imagined demos

The agent is the MBPO benchmark's (``PICK_RECIPE`` with ``ent_coef`` 0.05). ``imagined`` and
``real`` fill its replay buffer with N warm-up steps of ``pick:noise=0.1``, take one real step so
that it clones them for BC steps, and print its real success over 20 robosuite episodes
(deterministic, the evaluation seeds of every curve). ``real`` with a noise level first adds
Gaussian noise of that many metres to the demonstrations' states. ``stats`` prints the state,
step and action statistics of both kinds of demonstrations. One thread; prints one JSON line.
"""

import json
import sys
import time

import numpy as np
import torch
from stable_baselines3.common.callbacks import BaseCallback

from wmgym.env.sb3 import make_sb3_env
from wmgym.imagined_warmup import imagine_warmup
from wmgym.rl import RealEvaluator, RLArgs
from wmgym.spec import STATE_FIELDS, load_spec

EVAL_EPISODES = 20


class PerturbDemos(BaseCallback):
    """Adds Gaussian noise to the first ``n`` buffered states at step ``n``, before any update."""

    def __init__(self, n: int, noise: float, seed: int) -> None:
        super().__init__()
        self.n, self.noise, self.seed = n, noise, seed

    def _on_step(self) -> bool:
        if self.num_timesteps == self.n:
            states = self.model.replay_buffer.observations["state"]
            rng = np.random.default_rng(self.seed)
            states[:self.n] += rng.normal(0, self.noise, states[:self.n].shape).astype(states.dtype)
        return True


def make_agent(learning_starts: int, bc_steps: int, seed: int):  # noqa: ANN201
    """The MBPO benchmark's agent on a state-only Sim-Pick-v0, one gradient step per step."""
    args = RLArgs(learning_starts=learning_starts, warmup_policy="pick:noise=0.1",
                  warmup_bc_steps=bc_steps, warmup_bc_ratio=1.0, warmup_bc_filter=False,
                  actor_lr_scale=0.1, demo_ratio=0.5, critic_layer_norm=True,
                  standardize_state=True, ent_coef="0.05", progress=False)
    env = make_sb3_env(load_spec("pick").sim_id, num_envs=1, seed=seed, keys=["state"],
                       images=False, terminate_on_success=False)
    torch.manual_seed(seed)
    return args.make_sac(env, seed=seed, device="cpu", verbose=0, gradient_steps=1), env


def clone(kind: str, n: int, bc_steps: int, seed: int, noise: float = 0.0) -> dict:
    """Real success of the clone of ``n`` imagined or real demonstrations."""
    start = time.perf_counter()
    if kind == "imagined":  # imagine_warmup sets learning_starts to 0; 2,000 is only a placeholder
        agent, env = make_agent(2000, bc_steps, seed)
        warmup = imagine_warmup(agent, steps=n, seed=seed, device="cpu")
        agent.learn(1)
    else:
        agent, env = make_agent(n, bc_steps, seed)
        warmup = None
        agent.learn(n + 1, callback=PerturbDemos(n, noise, seed) if noise else None)
    seconds = time.perf_counter() - start
    env.close()
    evaluate = RealEvaluator(load_spec("pick"))
    try:
        real = evaluate(agent, EVAL_EPISODES)
    finally:
        evaluate.close()
    return {"kind": kind, "n": n, "bc": bc_steps, "seed": seed, "noise": noise,
            "warmup": warmup, "seconds": seconds, "real": real}


def stats(seed: int, n: int = 5000) -> dict:
    """Per-field statistics of ``n`` real and ``n`` imagined warm-up transitions."""
    out = {}
    for kind in ("real", "imagined"):
        agent, env = make_agent(n + 10, 0, seed)
        if kind == "real":
            agent.learn(n)
        else:
            imagine_warmup(agent, steps=n, seed=seed, device="cpu")
        rb = agent.replay_buffer
        state = np.asarray(rb.observations["state"][:n]).reshape(n, -1)
        step = np.asarray(rb.next_observations["state"][:n]).reshape(n, -1) - state
        action = np.asarray(rb.actions[:n]).reshape(n, -1)
        out[kind] = {
            "state_std": dict(zip(STATE_FIELDS, state.std(0, dtype=np.float64).round(4).tolist())),
            "step_std": dict(zip(STATE_FIELDS, step.std(0, dtype=np.float64).round(4).tolist())),
            "action_mean": action.mean(0, dtype=np.float64).round(3).tolist(),
            "reward_mean": round(float(np.asarray(rb.rewards[:n]).mean()), 3),
        }
        env.close()
    return out


if __name__ == "__main__":
    torch.set_num_threads(1)
    mode, *rest = sys.argv[1:]
    if mode == "stats":
        print(json.dumps(stats(int(rest[0]))))
    else:
        n, bc, seed = (int(v) for v in rest[:3])
        print(json.dumps(clone(mode, n, bc, seed, float(rest[3]) if len(rest) > 3 else 0.0)))
