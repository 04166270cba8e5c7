"""``wmgym collect``: episodes from the real twin under a policy mix, in parallel workers."""

from __future__ import annotations

import multiprocessing as mp
import time
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from tqdm import tqdm

from wmgym.data.dataset import Episode, write_dataset
from wmgym.spec import load_spec

#: The default mix: clean, noisy and mis-aimed picks, deliberate drops, picks that give up half
#: way, and random exploration — so the data covers approach, grasp, lift, misses and drops.
MIX: dict[str, float] = {
    "pick": 0.2,
    "pick:noise=0.3": 0.15,
    "pick:error=0.02": 0.15,
    "pick:error=0.04,noise=0.2": 0.1,
    "pick:drop_prob=1": 0.1,
    "pick:give_up_prob=1": 0.1,
    "random:repeat=4": 0.1,
    "random": 0.1,
}

#: Coverage of actions the scripted data never ties to other phases of the pick: excursions
#: (random actions and axis moves, standing still included) held 2-8 steps inside picks, and
#: long-held random actions. Collected as a second dataset beside ``MIX``'s.
EXPLORE_MIX: dict[str, float] = {
    "pick:explore=0.1": 0.3,
    "pick:explore=0.2,noise=0.1": 0.3,
    "pick:explore=0.15,error=0.02": 0.2,
    "random:repeat=10": 0.2,
}

#: Picks whose action size does not tell how far the target is: slower gains (the script's
#: unsaturated action is proportional to the distance to its target) and pauses (standing still
#: anywhere). A third dataset: with ``MIX``'s alone, a model reads "almost there" off a small
#: action (measured by ``wmgym.action_probe``).
SLOW_MIX: dict[str, float] = {
    "pick:gain=0.35,pause=0.05": 0.3,
    "pick:gain=0.6,pause=0.1,explore=0.05": 0.3,
    "pick:pause=0.15,explore=0.1": 0.2,
    "pick:gain=0.35,noise=0.1": 0.2,
}

#: Long excursions (up to 25 steps), most episodes starting with one from the reset frame: the
#: arm held at full speed towards the workspace edges, high above the table, far from the cube.
#: A fourth dataset: the action probes' largest errors were such moves from the start.
REACH_MIX: dict[str, float] = {
    "pick:explore=0.06,hold=25,lead=0.8": 0.4,
    "pick:explore=0.1,hold=20,lead=0.5,noise=0.1": 0.3,
    "pick:explore=0.05,hold=25,lead=1,gain=0.6": 0.15,
    "random:repeat=20": 0.15,
}

#: Hesitant grasps: the open gripper held at the cube (0-3 cm above the grasp point, 3-25 steps),
#: then a grasp or a feint (an empty lift, then the pick over). A fifth dataset: trained without
#: it, a model closes the fingers itself once the open gripper reaches the cube (an agent that
#: only hovers there lifts in imagination), since in the scripted data the fingers always did.
HESITATE_MIX: dict[str, float] = {
    "pick:hesitate=1": 0.35,
    "pick:hesitate=1,noise=0.1": 0.25,
    "pick:hesitate=1,error=0.02": 0.2,
    "pick:hesitate=0.5,pause=0.1": 0.2,
}

#: Descents stopped 1-3 cm above the grasp point, the arm held still with the gripper open for
#: 3-25 steps, then the descent goes on or the gripper closes there. A sixth dataset: with
#: ``HESITATE_MIX``'s alone, a model still lowered an arm told to stay onto the cube (where an
#: agent at rest above it got a grasp in imagination and none in robosuite).
HOVER_MIX: dict[str, float] = {
    "pick:hover=1": 0.4,
    "pick:hover=1,noise=0.05": 0.2,
    "pick:hover=1,hesitate=1": 0.2,
    "pick:hover=1,error=0.02": 0.2,
}

#: Misses: grasps aimed 4-6 cm off the cube (closing beside it, held open over it, or stopped
#: above the wrong spot) and step-by-step random actions. A seventh dataset: after the hesitate
#: and hover fine-tunes a model lifted the cube in imagination for mis-aimed picks and random
#: actions that lift nothing in robosuite (``wmgym sweep``: success gap 0.144).
MISS_MIX: dict[str, float] = {
    "pick:error=0.04": 0.25,
    "pick:error=0.06,noise=0.1": 0.2,
    "pick:hover=1,error=0.04": 0.2,
    "pick:hesitate=1,error=0.04": 0.15,
    "random": 0.2,
}

#: Near misses: grasps aimed 1.5-3.5 cm off (per-axis std) and very noisy picks, the regime
#: where robosuite's grasp holds about half the time. An eighth dataset: with the other seven a
#: model was optimistic there by about 0.1 in success (``wmgym sweep``, 40 seeds:
#: ``pick:error=0.02`` 0.62 imagined against 0.45 real), lifting cubes the fingers had missed.
NEARMISS_MIX: dict[str, float] = {
    "pick:error=0.025": 0.25,
    "pick:error=0.035,noise=0.1": 0.2,
    "pick:error=0.015,noise=0.25": 0.2,
    "pick:noise=0.5": 0.2,
    "pick:hover=1,error=0.025": 0.15,
}

MIXES: dict[str, dict[str, float]] = {
    "mix": MIX, "explore": EXPLORE_MIX, "slow": SLOW_MIX, "reach": REACH_MIX,
    "hesitate": HESITATE_MIX, "hover": HOVER_MIX, "miss": MISS_MIX, "nearmiss": NEARMISS_MIX,
}


@dataclass
class CollectArgs:
    """Options of ``wmgym collect``."""

    out: str = "data/pick"
    """Output dataset directory (written atomically)."""
    episodes: int = 200
    """Number of episodes."""
    policy: str = "mix"
    """``mix`` (the default mix), ``explore`` (off-script actions), ``slow`` (slow picks and
    pauses), ``reach`` (long held moves from the start), ``hesitate`` (open gripper held at the
    cube, grasps and feints), ``hover`` (descents stopped above the cube), ``miss`` (mis-aimed
    grasps and random actions), ``nearmiss`` (grasps aimed 1.5-3.5 cm off, very noisy picks),
    or one policy name
    such as
    ``pick:noise=0.3`` or ``random``."""
    workers: int = 2
    """Worker processes, each with its own simulator."""
    task: str = "pick"
    """Task spec name under ``envs/``."""
    seed: int = 0
    """Base seed: episode ``i`` resets with ``seed + i`` and picks its policy from it."""
    max_steps: int = 0
    """Steps per episode (0 = the spec's ``max_episode_steps``)."""
    heldout: float = 0.1
    """Fraction of episodes held out for evaluation (fixed by ``seed``)."""
    overwrite: bool = False
    """Replace ``out`` if it exists."""


def choose_policy(policy: str, seed: int) -> str:
    """The policy name for an episode: ``policy`` itself, or a draw from a mix by ``seed``."""
    if policy not in MIXES:
        return policy
    mix = MIXES[policy]
    names, weights = list(mix), np.array(list(mix.values()))
    return names[np.random.default_rng([seed, 7]).choice(len(names), p=weights / weights.sum())]


_ENV = None


def _worker_init(task: str, max_steps: int) -> None:
    global _ENV
    import gymnasium as gym

    import wmgym  # noqa: F401  (registers the envs)

    spec = load_spec(task)
    _ENV = gym.make(
        spec.sim_id, terminate_on_success=False,
        max_episode_steps=max_steps or spec.max_episode_steps,
    )


def run_episode(env, policy_name: str, seed: int) -> Episode:
    """Runs one episode of ``policy_name`` from ``env.reset(seed=seed)`` and records it."""
    from wmgym.policies import make_policy

    policy = make_policy(policy_name)
    policy.reset(seed)
    obs, _ = env.reset(seed=seed)
    observations = defaultdict(list)
    actions, rewards, terms, truncs, success = [], [], [], [], []
    for k, v in obs.items():
        observations[k].append(v)
    done = False
    while not done:
        action = np.clip(policy(obs), -1.0, 1.0).astype(np.float32)
        obs, reward, terminated, truncated, info = env.step(action)
        for k, v in obs.items():
            observations[k].append(v)
        actions.append(action)
        rewards.append(reward)
        terms.append(terminated)
        truncs.append(truncated)
        success.append(info["success"])
        done = terminated or truncated
    return Episode(
        observations={k: np.stack(v) for k, v in observations.items()},
        actions=np.stack(actions),
        rewards=np.asarray(rewards, np.float32),
        terminations=np.asarray(terms, bool),
        truncations=np.asarray(truncs, bool),
        success=np.asarray(success, bool),
        seed=seed,
        policy=policy_name,
    )


def _work(job: tuple[int, str, int]) -> tuple[int, Episode]:
    index, policy_name, seed = job
    return index, run_episode(_ENV, policy_name, seed)


def collect(args: CollectArgs) -> dict:
    """Collects ``args.episodes`` episodes in parallel, writes the dataset, returns a summary."""
    spec = load_spec(args.task)
    jobs = [(i, choose_policy(args.policy, args.seed + i), args.seed + i)
            for i in range(args.episodes)]
    if Path(args.out).exists() and not args.overwrite:
        raise FileExistsError(f"{args.out} exists; pass --overwrite to replace it")
    start = time.perf_counter()
    episodes: list[Episode | None] = [None] * len(jobs)
    ctx = mp.get_context("spawn")  # a fresh GL context and MuJoCo per worker
    with ctx.Pool(args.workers, _worker_init, (args.task, args.max_steps)) as pool:
        bar = tqdm(pool.imap_unordered(_work, jobs), total=len(jobs), desc="collect", unit="ep")
        for index, episode in bar:
            episodes[index] = episode
    elapsed = time.perf_counter() - start
    done = [e for e in episodes if e is not None]
    summary = summarize(done, elapsed, args.workers)
    write_dataset(
        args.out, done, spec, heldout_fraction=args.heldout, split_seed=args.seed,
        extra={"summary": summary}, overwrite=args.overwrite,
    )
    return summary


def summarize(episodes: list[Episode], seconds: float, workers: int) -> dict:
    """Episodes, steps, success rate per policy and throughput."""
    per_policy: dict[str, list[bool]] = defaultdict(list)
    for ep in episodes:
        per_policy[ep.policy].append(bool(ep.success.any()))
    steps = sum(len(ep) for ep in episodes)
    return {
        "episodes": len(episodes),
        "steps": steps,
        "success_rate": float(np.mean([ep.success.any() for ep in episodes])),
        "per_policy": {
            name: {"episodes": len(s), "success_rate": float(np.mean(s))}
            for name, s in sorted(per_policy.items())
        },
        "seconds": round(seconds, 1),
        "workers": workers,
        "steps_per_second": round(steps / max(seconds, 1e-9), 1),
    }


def format_summary(summary: dict) -> str:
    """The summary as a small text table."""
    lines = [f"{'policy':<28} {'episodes':>8} {'success':>8}"]
    for name, row in summary["per_policy"].items():
        lines.append(f"{name:<28} {row['episodes']:>8} {row['success_rate']:>8.2f}")
    lines.append(
        f"{'total':<28} {summary['episodes']:>8} {summary['success_rate']:>8.2f}   "
        f"{summary['steps']} steps in {summary['seconds']} s with {summary['workers']} workers "
        f"({summary['steps_per_second']} steps/s)"
    )
    return "\n".join(lines)


def collect_main(args: CollectArgs) -> None:
    """``wmgym collect``: collect, write, print the summary."""
    summary = collect(args)
    print(format_summary(summary))
    print(f"wrote {args.out}")
