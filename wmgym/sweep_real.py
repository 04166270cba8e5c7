"""The real twin's side of a sweep, and the outcome record both twins' episodes share.

:func:`run_real` runs ``(policy factory, seed)`` episodes in ``Sim-<Task>-v0`` (in this process
or in spawned workers), :func:`reset_observations` gives the first observations the learned
twin starts from, and :func:`reuse_real` reads the real episodes of an earlier ``sweep.json``.
"""

from __future__ import annotations

import json
import multiprocessing as mp
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np
from tqdm.auto import tqdm

from wmgym.policies import Policy
from wmgym.spec import TaskSpec


class Episodes(NamedTuple):
    """Outcomes of a batch of episodes, one entry per episode."""

    success: np.ndarray
    """``(N,)`` bool: ``info["success"]`` at any step."""
    ret: np.ndarray
    """``(N,)`` float: sum of rewards."""
    length: np.ndarray
    """``(N,)`` int: steps taken."""
    uncertainty: np.ndarray | None = None
    """``(N,)`` float: mean ``info["uncertainty"]`` over the steps (imagined episodes only)."""
    doubt: np.ndarray | None = None
    """``(N,)`` float: chance that an event outcome parts from reality, ``1 - prod(1 -
    info["event_doubt"])`` over the steps (imagined episodes only)."""


def start_episode(policy: Policy, seed: int) -> None:
    if hasattr(policy, "reset"):
        policy.reset(seed=seed)


def _sim_env(env_id: str, images: bool, **kwargs: Any) -> Any:
    """``Sim-<Task>-v0``; without camera observations it can still render (first frames)."""
    from wmgym.registration import make_env

    return make_env(env_id, images=images, **({} if images else {"render_mode": "rgb_array"}),
                    **kwargs)


def _real_episode(env: Any, make: Callable[[], Policy], seed: int) -> tuple[Any, ...]:
    """One Sim episode: ``(success, return, length, first observation with its images)``."""
    policy = make()
    start_episode(policy, seed)
    obs, _ = env.reset(seed=seed)
    first = obs if "rgb" in obs else {**env.unwrapped.render_images(), **obs}
    success, ret, t = False, 0.0, 0
    done = False
    while not done:
        obs, reward, terminated, truncated, info = env.step(policy(obs))
        success, ret, t = success or bool(info["success"]), ret + float(reward), t + 1
        done = terminated or truncated
    return success, ret, t, first


_WORKER_ENV: Any = None


def _init_worker(env_id: str, max_steps: int, images: bool) -> None:
    global _WORKER_ENV
    _WORKER_ENV = _sim_env(env_id, images, max_episode_steps=max_steps)


def _worker_episode(job: tuple[Callable[[], Policy], int]) -> tuple[Any, ...]:
    return _real_episode(_WORKER_ENV, *job)


def run_real(
    spec: TaskSpec,
    jobs: Sequence[tuple[Callable[[], Policy], int]],
    *,
    max_steps: int,
    workers: int = 1,
    progress: bool = True,
    images: bool = True,
) -> tuple[Episodes, list[dict[str, np.ndarray]]]:
    """Runs ``(policy factory, seed)`` episodes in ``Sim-<Task>-v0``.

    Args:
        spec: The task.
        jobs: One ``(factory, seed)`` per episode.
        max_steps: Truncate episodes after this many steps.
        workers: Processes (spawned, each with its own robosuite env); 1 runs in this process.
            With more, the factories are pickled to the workers.
        progress: Show a progress bar.
        images: Camera observations at every step (else the policies see ``proprio`` and
            ``state`` only and just the first observations are rendered).

    Returns:
        The episodes' outcomes and each episode's first (reset) observation, images included,
        in job order.
    """
    bar = tqdm(total=len(jobs), desc=f"{spec.sim_id} episodes", disable=not progress)
    results = []
    if workers <= 1:
        env = _sim_env(spec.sim_id, images, max_episode_steps=max_steps)
        for job in jobs:
            results.append(_real_episode(env, *job))
            bar.update()
        env.close()
    else:
        ctx = mp.get_context("spawn")  # a forked child inherits the parent's EGL state and hangs
        with ctx.Pool(workers, _init_worker, (spec.sim_id, max_steps, images)) as pool:
            for r in pool.imap(_worker_episode, jobs):
                results.append(r)
                bar.update()
    bar.close()
    success, ret, length, first = zip(*results)
    return Episodes(np.array(success), np.array(ret), np.array(length)), list(first)


def reset_observations(spec: TaskSpec, seeds: Sequence[int]) -> list[dict[str, np.ndarray]]:
    """``Sim-<Task>-v0``'s first observation (camera included) after ``reset(seed)``, per seed."""
    env = _sim_env(spec.sim_id, images=True)
    first = [env.reset(seed=int(s))[0] for s in seeds]
    env.close()
    return first


def reuse_real(
    path: str | Path, names: Sequence[str], *, task: str, seeds: Sequence[int], max_steps: int
) -> dict[str, Episodes]:
    """The real-twin episodes of the policies in ``names`` that the sweep result ``path`` holds.

    Raises:
        ValueError: ``path`` was run on another task, other seeds or another ``max_steps``.
    """
    prev = json.loads(Path(path).read_text())
    want = {"task": task, "seeds": list(seeds), "max_steps": max_steps}
    got = {k: prev.get(k) for k in want}
    if got != want:
        raise ValueError(f"{path}: cannot reuse its real episodes: it ran {got}, "
                         f"this sweep needs {want}")
    out = {}
    for p in prev["policies"]:
        if p["name"] in names:
            per = p["real"]["per_episode"]
            out[p["name"]] = Episodes(np.array(per["success"], bool),
                                      np.array(per["return"], float), np.array(per["length"]))
    return out
