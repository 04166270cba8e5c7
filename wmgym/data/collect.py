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
from wmgym.policy_sources import family_agents
from wmgym.spec import load_spec
from wmgym.tasks import mixes as task_mixes


@dataclass
class CollectArgs:
    """Options of ``wmgym collect``."""

    task: str
    """Task name (a spec under ``envs/``) or a spec's path."""
    out: str = ""
    """Output dataset directory, written atomically (default: ``data/<task>_<policy>``)."""
    episodes: int = 200
    """Number of episodes."""
    policy: str = "mix"
    """A data mix of the task (``wmgym.tasks.<task>.MIXES``: for Pick ``mix``, ``play``,
    ``explore``, ``slow``, ``reach``, ``hesitate``, ``hover``, ``miss``, ``nearmiss``), one
    policy name such as ``pick:noise=0.3`` or ``random:repeat=4``, a frozen agent
    ``agent:DIR`` or a family of them, ``family:DIR`` (episode ``i`` takes agent ``i`` mod
    their number): real rollouts of learned agents to train on (never the benchmark's family:
    build a sibling with ``wmgym agents build --seed-offset``)."""
    workers: int = 2
    """Worker processes, each with its own simulator."""
    seed: int = 0
    """Base seed: episode ``i`` resets with ``seed + i`` and picks its policy from it."""
    max_steps: int = 0
    """Steps per episode (0 = the spec's ``max_episode_steps``)."""
    heldout: float = 0.1
    """Fraction of episodes held out for evaluation (fixed by ``seed``)."""
    overwrite: bool = False
    """Replace ``out`` if it exists."""
    images: bool = True
    """Record the cameras (``--no-images``: ``state`` only, about 4x faster; such a dataset
    feeds the state model, ``wmgym train state-model``, not the tokenizer or the transformer)."""


def choose_policy(policy: str, seed: int, mixes: dict[str, dict[str, float]]) -> str:
    """The policy name for the episode of ``seed``.

    ``policy`` itself or a draw from ``mixes[policy]``.
    """
    if policy not in mixes:
        return policy
    mix = mixes[policy]
    names, weights = list(mix), np.array(list(mix.values()))
    return names[np.random.default_rng([seed, 7]).choice(len(names), p=weights / weights.sum())]


_ENV = None


def _worker_init(task: str, max_steps: int, images: bool) -> None:
    global _ENV
    from gymnasium.wrappers import TimeLimit

    from wmgym.sim import SimEnv

    spec = load_spec(task)
    _ENV = TimeLimit(SimEnv(spec, images=images, terminate_on_success=False),
                     max_episode_steps=max_steps or spec.max_episode_steps)


def run_episode(env, policy_name: str, seed: int) -> Episode:
    """Runs one episode of ``policy_name`` from ``env.reset(seed=seed)`` and records it.

    ``proprio`` is not stored: it is read off ``state``.
    """
    from wmgym.policy_sources import policy_factory

    policy = policy_factory(policy_name, task=env.unwrapped.task)()
    policy.reset(seed)
    obs, _ = env.reset(seed=seed)
    observations = defaultdict(list)
    actions, rewards, terms, truncs, success = [], [], [], [], []
    keep = [k for k in obs if k != "proprio"]
    for k in keep:
        observations[k].append(obs[k])
    done = False
    while not done:
        action = np.clip(policy(obs), -1.0, 1.0).astype(np.float32)
        obs, reward, terminated, truncated, info = env.step(action)
        for k in keep:
            observations[k].append(obs[k])
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
    out = args.out or default_out(spec.name, args.policy)
    mixes = task_mixes(spec)
    if args.policy.startswith("family:"):  # episode i takes agent i mod their number
        agents = family_agents(args.policy.partition(":")[2])
        jobs = [(i, agents[i % len(agents)], args.seed + i) for i in range(args.episodes)]
    else:
        jobs = [(i, choose_policy(args.policy, args.seed + i, mixes), args.seed + i)
                for i in range(args.episodes)]
    if Path(out).exists() and not args.overwrite:
        raise FileExistsError(f"{out} exists; pass --overwrite to replace it")
    start = time.perf_counter()
    episodes: list[Episode | None] = [None] * len(jobs)
    ctx = mp.get_context("spawn")  # a fresh GL context and MuJoCo per worker
    init = (str(spec.path), args.max_steps, args.images)
    with ctx.Pool(args.workers, _worker_init, init) as pool:
        bar = tqdm(pool.imap_unordered(_work, jobs), total=len(jobs), desc="collect", unit="ep")
        for index, episode in bar:
            episodes[index] = episode
    elapsed = time.perf_counter() - start
    done = [e for e in episodes if e is not None]
    summary = summarize(done, elapsed, args.workers)
    write_dataset(
        out, done, spec, heldout_fraction=args.heldout, split_seed=args.seed,
        extra={"summary": summary}, overwrite=args.overwrite,
    )
    return {**summary, "out": str(out)}


def default_out(task: str, policy: str) -> str:
    """``data/<task>_<policy>`` with the policy name made file-safe."""
    safe = "".join(c if c.isalnum() or c in "-_." else "_" for c in policy)
    return f"data/{task.lower()}_{safe}"


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
    print(f"wrote {summary['out']}")
